"""Training: a flat config, one loop for one CPU, one GPU or many (torchrun), exact resume.

    from fcnseg.train import TrainConfig, train
    result = train(TrainConfig.from_yaml("configs/camvid/fcn32s.yaml", root="../shared/data/camvid"))

The parts: :mod:`~fcnseg.train.config` (the options), :mod:`~fcnseg.train.data` (augmented datasets,
resumable sample order), :mod:`~fcnseg.train.run` (building data, model and optimisation),
:mod:`~fcnseg.train.state` (checkpoints and resume), :mod:`~fcnseg.train.log` (progress, CSV, TensorBoard)
and :mod:`~fcnseg.train.loop` (the steps and :func:`train`).
"""

from fcnseg.train.config import TrainConfig
from fcnseg.train.loop import train

__all__ = ["TrainConfig", "train"]
