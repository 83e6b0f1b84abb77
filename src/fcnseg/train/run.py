"""Building a training run: runtime, seeds, data, model, optimizer, schedule and loss, in one :class:`Run`."""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fcnseg.checkpoint import read_checkpoint
from fcnseg.data.balance import ClassPixels, balancing_weights, class_pixel_counts
from fcnseg.data.base import SegmentationDataset
from fcnseg.data.info import DatasetInfo
from fcnseg.errors import ConfigError, TrainingError
from fcnseg.models import build_model
from fcnseg.models.fcn import FCN
from fcnseg.models.weights import init_from_coarser, load_imagenet_weights, matching_classes
from fcnseg.outputs import Outputs
from fcnseg.progress import is_quiet
from fcnseg.runtime import Runtime, broadcast_from_main, native_bf16
from fcnseg.train.config import TrainConfig
from fcnseg.train.data import EpochSampler, build_datasets
from fcnseg.train.ema import ema_copy


@dataclass
class Run:
    """Everything a training run holds; ``iteration`` and ``best_mean_iu`` move as it trains."""

    config: TrainConfig
    runtime: Runtime
    out: Path
    info: DatasetInfo
    train_set: SegmentationDataset
    val_set: SegmentationDataset
    sampler: EpochSampler
    model: FCN  # the net itself; ``train_model`` may wrap it (DistributedDataParallel)
    train_model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    class_weights: torch.Tensor | None
    outputs: Outputs  # the run folder's record of the files fcnseg train wrote
    ema: FCN | None = None  # the moving average of the weights (ema_decay), validated and saved instead
    iteration: int = 0
    best_mean_iu: float = -1.0

    @property
    def saved_model(self) -> FCN:
        """The net that is validated and saved: the moving average when there is one."""
        return self.ema if self.ema is not None else self.model

    @property
    def last_path(self) -> Path:
        return self.out / "last.pth"

    @property
    def best_path(self) -> Path:
        return self.out / "best.pth"


def build_run(config: TrainConfig, runtime: Runtime) -> Run:
    """Seed every RNG, build and check the data, build the model and the optimisation around it."""
    if config.amp == "fp16" and runtime.device.type != "cuda":
        raise TrainingError("amp fp16 needs a CUDA GPU (use --amp bf16 on the CPU)")
    if config.amp == "bf16" and not native_bf16(runtime.device) and runtime.is_main and not is_quiet():
        print(f"fcnseg train: note: bf16 is emulated on this {runtime.device.type.upper()} (no AVX512-BF16 or AMX): "
              "slower than float32 here; --amp none is faster", file=sys.stderr)
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    np.random.seed(config.seed)
    init = read_checkpoint(resolve_init_checkpoint(config.init_from)) if config.init_from else None
    # The data must be normalised as the starting weights expect (Caffe BGR for the authors' weights).
    normalization = init.get("normalization", "imagenet") if init else "imagenet"
    train_set, val_set = build_datasets(config, normalization)
    start_inputs = tuple(init["model"].get("inputs", ("rgb",))) if init else train_set.inputs
    if start_inputs != train_set.inputs:
        raise ConfigError(f"the starting net reads {'+'.join(start_inputs)} but the dataset's images are "
                          f"{'+'.join(train_set.inputs)}: give the dataset the net's inputs (dataset_options: "
                          f"{{inputs: {'+'.join(start_inputs)}}})")
    info = train_set.info
    per_process = -(-len(train_set) // runtime.world_size)
    if config.batch_size > per_process and runtime.is_main and not is_quiet():
        print(f"fcnseg train: note: batch_size {config.batch_size} is larger than the {per_process} training images "
              "each process has: every step sees them all (a smaller batch would take more steps per epoch)",
              file=sys.stderr)
    model = build_training_model(config, info.num_classes, init, info.class_names,
                                 extra_heads=tuple(head.num_classes for head in info.extra_heads),
                                 inputs=train_set.inputs)
    model.to(runtime.device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    train_model = _distributed(model, runtime)
    optimizer = build_optimizer(model, config)
    class_weights = listed_loss_weights(config, info, runtime)
    return Run(config=config, runtime=runtime, out=Path(config.out), info=info, train_set=train_set,
               val_set=val_set, sampler=EpochSampler(len(train_set), config.seed, runtime.rank, runtime.world_size),
               model=model, train_model=train_model, optimizer=optimizer,
               scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(config, it)),
               scaler=torch.amp.GradScaler(runtime.device.type, enabled=config.amp == "fp16"),
               class_weights=class_weights, outputs=Outputs(config.out, "train", config.overwrite),
               ema=ema_copy(model) if config.ema_decay else None)


def listed_loss_weights(config: TrainConfig, info: DatasetInfo, runtime: Runtime) -> torch.Tensor | None:
    """The loss's class weights when the config lists them; None when there are none or they are to be
    computed from the training labels (:func:`balanced_loss_weights`, once the split has been read)."""
    if not config.class_weights or isinstance(config.class_weights, str):
        return None
    if len(config.class_weights) != info.num_classes:
        raise ConfigError(f"class_weights has {len(config.class_weights)} entries for {info.num_classes} classes")
    return torch.tensor(config.class_weights, dtype=torch.float32, device=runtime.device)


def balanced_loss_weights(run: Run, counted: ClassPixels | None) -> torch.Tensor:
    """Class weights by the config's balancing method from the training split's pixel counts (those of the
    dataset check, or counted here for a generated dataset), computed on the main process and sent to the
    others under torchrun."""
    weights = torch.zeros(run.info.num_classes, dtype=torch.float32, device=run.runtime.device)
    if run.runtime.is_main:
        counted = counted if counted is not None else class_pixel_counts(run.train_set)
        values = balancing_weights(run.config.class_weights, counted, run.config.inverse_log_c)
        weights.copy_(torch.from_numpy(values))
        if not is_quiet():
            shown = ", ".join(f"{name} {w:.3g}" for name, w in zip(run.info.class_names, values, strict=True))
            print(f"fcnseg train: class weights ({run.config.class_weights}): {shown}", file=sys.stderr)
    return broadcast_from_main(weights, run.runtime)


def _distributed(model: FCN, runtime: Runtime) -> nn.Module:
    """The module to train: the model itself, or under torchrun a DistributedDataParallel around it."""
    if not runtime.distributed:
        return model
    # SyncBatchNorm runs on GPUs only; CPU processes on gloo keep per-process batch statistics.
    if runtime.device.type == "cuda" and any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        nn.SyncBatchNorm.convert_sync_batchnorm(model)
    device_ids = [runtime.local_rank] if runtime.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def resolve_init_checkpoint(path: str) -> Path:
    """A run folder (its best.pth, else last.pth) or a checkpoint file."""
    candidate = Path(path)
    if candidate.is_dir():
        for name in ("best.pth", "last.pth"):
            if (candidate / name).is_file():
                return candidate / name
        raise TrainingError(f"{candidate} holds no best.pth or last.pth to initialise from")
    return candidate


def build_training_model(config: TrainConfig, num_classes: int, init: dict[str, Any] | None = None,
                         class_names: tuple[str, ...] | None = None, extra_heads: tuple[int, ...] = (),
                         inputs: tuple[str, ...] = ("rgb",)) -> FCN:
    """The net of ``config`` (with one more head per ``extra_heads`` entry, for datasets labelled for several
    tasks, and one trunk per input, for datasets of colour and depth), with ImageNet weights and/or a coarser
    net's weights (``init``) loaded."""
    model = build_model(config.model, backbone=config.backbone, num_classes=num_classes, width=config.width,
                        geometry=config.geometry, learnable_upsampling=config.learnable_upsampling,
                        dropout=config.dropout, extra_heads=extra_heads, inputs=inputs)
    if config.imagenet_weights:
        load_imagenet_weights(model, None if config.imagenet_weights == "default" else config.imagenet_weights)
    if init is not None:
        old = tuple(init["dataset"]["class_names"])
        new = class_names or old
        init_from_coarser(model, init["model_state_dict"], classes=(old, new))
        if tuple(new) != old and not is_quiet():
            carried = [new[j] for _, j in matching_classes(old, new)]
            print(f"fcnseg train: the starting net scored {len(old)} classes, this one {len(new)}: its backbone is "
                  f"kept, the score layers start at zero except for the {len(carried)} class(es) both share"
                  f"{': ' + ', '.join(carried) if carried else ''}", file=sys.stderr)
        model.backbone.input_normalization = init.get("normalization", model.backbone.input_normalization)
    return model


def parameter_groups(model: nn.Module, config: TrainConfig, lr: float) -> list[dict[str, Any]]:
    """Biases (and other 1-d parameters) without weight decay; the paper recipe gives them twice the lr."""
    weights, biases = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (biases if name.endswith(".bias") or parameter.ndim == 1 else weights).append(parameter)
    if config.recipe == "paper":
        return [{"params": weights, "lr": lr, "weight_decay": config.weight_decay},
                {"params": biases, "lr": 2 * lr, "weight_decay": 0.0}]
    return [{"params": weights, "weight_decay": config.weight_decay},
            {"params": biases, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    lr = config.resolved_lr()
    groups = parameter_groups(model, config, lr)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    momentum = 0.99 if config.recipe == "paper" else config.momentum
    return torch.optim.SGD(groups, lr=lr, momentum=momentum)


def lr_factor(config: TrainConfig, iteration: int) -> float:
    """Linear warm-up, then poly decay (1 - t/T)^power or constant."""
    if iteration < config.warmup_iterations:
        return (iteration + 1) / config.warmup_iterations
    if config.schedule == "constant":
        return 1.0
    return max(0.0, 1 - iteration / config.iterations) ** config.poly_power


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int, reduction: str,
                      class_weights: torch.Tensor | None, heads: tuple[int, ...] | None = None) -> torch.Tensor:
    """Pixel-wise softmax cross-entropy; ``sum`` is the authors' "unnormalized" loss.

    A net with several ``heads`` (class counts; targets N x K x H x W) is trained on the sum of each head's
    loss, as the authors' SIFT Flow nets are; ``class_weights`` then weigh the first head's classes.
    """
    if heads is None or len(heads) == 1:
        return F.cross_entropy(logits.float(), target, weight=class_weights, ignore_index=ignore_index,
                               reduction=reduction)
    parts = logits.float().split(heads, 1)
    return sum(F.cross_entropy(part, target[:, k], weight=class_weights if k == 0 else None,
                               ignore_index=ignore_index, reduction=reduction) for k, part in enumerate(parts))
