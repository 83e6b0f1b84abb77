"""Building a training run: runtime, seeds, data, model, optimizer, schedule and loss, in one :class:`Run`."""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fcnseg.checkpoint import checked_checkpoint, checkpoint_spec, read_checkpoint
from fcnseg.data.balance import ClassPixels, balancing_weights, class_pixel_counts
from fcnseg.data.base import SegmentationDataset
from fcnseg.data.info import DatasetInfo
from fcnseg.errors import ConfigError, TrainingError, listing
from fcnseg.inference import InferenceOptions
from fcnseg.models import build_model
from fcnseg.models.fcn import FCN
from fcnseg.models.spec import TRANSFORM_INPUT_BACKBONES, ModelSpec
from fcnseg.models.weights import fcn_from_imagenet, imagenet_spec, init_from_coarser, matching_classes
from fcnseg.outputs import Outputs
from fcnseg.runtime import Runtime, broadcast_from_main, gather_objects, native_bf16
from fcnseg.train.budget import check_step_memory
from fcnseg.train.config import TrainConfig, resolve_init_checkpoint
from fcnseg.train.data import EpochSampler, build_datasets
from fcnseg.train.ema import ema_copy

log = logging.getLogger(__name__)


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
    amp: str = "none"  # the precision the forward pass runs in: config.amp, with auto resolved for this device
    iteration: int = 0
    best_mean_iu: float = -1.0
    checked_pixels: int = 0  # the largest batch (samples x height x width) whose memory estimate fits the budget
    plan_validation: Callable[[int, int, int, InferenceOptions], InferenceOptions] | None = None  # made when first used

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


def _smallest_whole_images(config: TrainConfig, size: tuple[int, int] | None) -> tuple[int, int] | None:
    """The smallest (height, width) a training step on whole images of ``size`` can see (the rescaling range's
    low end), where ``size`` is known before any sample is read; a step it would not fit is refused then, before
    the samples are made (each batch is checked again as it comes)."""
    if size is None:
        return None
    low = config.scale_range[0] if config.scale_range else 1.0
    return max(1, int(size[0] * low)), max(1, int(size[1] * low))


def _refuse_other_classes(config: TrainConfig, spec: ModelSpec, info: DatasetInfo, resumed: dict[str, Any]) -> None:
    """A resume reads its data where ``--root`` now says (the data may move); refused where that data holds other
    classes than the run trained on (it went on with other labels, or failed in a traceback)."""
    trained = spec.classes.class_names if spec.classes is not None else None
    if trained is None or tuple(trained) == tuple(info.class_names):
        return
    was = (resumed.get("config") or {}).get("root")
    raise TrainingError(f"--resume: {config.out} trained on {len(trained)} classes ({listing(trained, 6)}), but the "
                        f"data at {config.root} holds {len(info.class_names)} ({listing(info.class_names, 6)}): give "
                        f"the run's data with --root{f' (it was {was})' if was else ''}, or start a new run from its "
                        f"weights with --init-from {config.out}/last.pth")


def build_run(config: TrainConfig, runtime: Runtime, resumed: dict[str, Any] | None = None) -> Run:
    """Seed every RNG, build and check the data, build the model and the optimisation around it. A resumed run
    (``resumed``: its last.pth) starts from its own checkpoint, not from init_from or ImageNet's weights again:
    those files may be gone or replaced since, and its weights are restored from last.pth anyway."""
    amp = resolved_amp(config.amp, runtime)
    # lr_factor rises over the warm-up, then decays to 0 at the last iteration: a warm-up this long leaves no decay
    if config.warmup_iterations >= config.iterations and runtime.is_main:
        log.warning(f"warmup_iterations {config.warmup_iterations} is not shorter than the run's {config.iterations} "
                    "iterations: the learning rate rises for the whole run and never decays")
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    np.random.seed(config.seed)
    init_path = resolve_init_checkpoint(config.init_from) if config.init_from and resumed is None else None
    init = read_checkpoint(init_path) if init_path else resumed
    init_spec = checked_checkpoint(init, init_path or Path(config.out) / "last.pth")[0] if init else None
    # The data must be normalised as the starting weights expect (Caffe BGR for the authors' weights).
    train_set, val_set = build_datasets(config, init_spec.normalization_text if init_spec else "imagenet")
    if init_spec and init_spec.inputs != train_set.inputs:
        raise ConfigError(f"the starting net reads {'+'.join(init_spec.inputs)} but the dataset's images are "
                          f"{'+'.join(train_set.inputs)}: give the dataset the net's inputs (dataset_options: "
                          f"{{inputs: {'+'.join(init_spec.inputs)}}})")
    info = train_set.info
    if resumed is not None:
        _refuse_other_classes(config, init_spec, info, resumed)
    class_weights = listed_loss_weights(config, info, runtime)  # refused before the model is built
    per_process = -(-len(train_set) // runtime.world_size)
    batch = min(config.batch_size, per_process)
    smallest_step = config.crop_size or _smallest_whole_images(config, train_set.known_size())
    if smallest_step:  # before any loader starts: crops are padded in numpy there, generated scenes made
        check_step_memory(config, training_spec(config, info, train_set.inputs, init_spec), runtime, batch,
                          *smallest_step)
    if config.batch_size > per_process and runtime.is_main:
        log.info(f"note: batch_size {config.batch_size} is larger than the {per_process} training images "
                 "each process has: every step sees them all (a smaller batch would take more steps per epoch)")
    model = build_training_model(config, info, init, inputs=train_set.inputs)
    model.to(runtime.device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    train_model = _distributed(model, runtime)
    optimizer = build_optimizer(model, config)
    return Run(config=config, runtime=runtime, out=Path(config.out), info=info, train_set=train_set,
               val_set=val_set, sampler=EpochSampler(len(train_set), config.seed, runtime.rank, runtime.world_size),
               model=model, train_model=train_model, optimizer=optimizer,
               scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(config, it)),
               scaler=torch.amp.GradScaler(runtime.device.type, enabled=amp == "fp16"), amp=amp,
               class_weights=class_weights, outputs=Outputs(config.out, "train", config.overwrite),
               ema=ema_copy(model) if config.ema_decay else None,
               checked_pixels=batch * config.crop_size[0] * config.crop_size[1] if config.crop_size else 0)


def resolved_amp(amp: str, runtime: Runtime) -> str:
    """The precision of the forward pass: ``amp`` as configured, with ``auto`` made bf16 where ``runtime``'s device
    computes bfloat16 natively and none (float32) elsewhere; said once by the main process."""
    if amp == "fp16" and runtime.device.type != "cuda":
        raise TrainingError("amp fp16 needs a CUDA GPU (use --amp bf16 on the CPU)")
    if amp not in ("bf16", "auto"):
        return amp
    native = native_bf16(runtime.device)
    if amp == "bf16" and not native and runtime.is_main:
        log.info(f"note: bf16 is emulated on this {runtime.device.type.upper()} (no AVX512-BF16 or AMX): "
                 "slower than float32 here; --amp none is faster")
    if amp != "auto":
        return amp
    resolved = "bf16" if native else "none"
    if len(set(gather_objects(resolved, runtime))) > 1:  # every process of the run computes alike
        raise TrainingError("amp auto is bf16 on some of this run's machines and float32 on others (not all of their "
                            "CPUs compute bfloat16 natively): give --amp bf16 or --amp none")
    if runtime.is_main:
        log.info(f"note: amp auto: {'bf16' if native else 'float32'} on this {runtime.device.type.upper()} "
                 f"({'native' if native else 'no native'} bfloat16)")
    return resolved


def listed_loss_weights(config: TrainConfig, info: DatasetInfo, runtime: Runtime) -> torch.Tensor | None:
    """The loss's class weights when the config lists them; None when there are none or they are to be
    computed from the training labels (:func:`balanced_loss_weights`, once the split has been read)."""
    if not config.class_weights or isinstance(config.class_weights, str):
        return None
    if len(config.class_weights) != info.num_classes:
        raise ConfigError(f"class_weights has {len(config.class_weights)} entries for {info.num_classes} classes")
    check_class_weights(config.class_weights, info.class_names)
    return torch.tensor(config.class_weights, dtype=torch.float32, device=runtime.device)


def check_class_weights(weights: list[float], class_names: Sequence[str]) -> None:
    """Refuse loss weights that can only give a NaN or meaningless loss: not finite, negative (the loss would
    reward getting a class wrong), or all 0 (every mean loss is 0 / 0)."""
    named = list(zip(class_names, weights, strict=True))
    bad = [f"{name} {weight:g}" for name, weight in named if not math.isfinite(weight)]
    if bad:
        raise ConfigError(f"class_weights must be finite numbers; got {', '.join(bad)}")
    bad = [f"{name} {weight:g}" for name, weight in named if weight < 0]
    if bad:
        raise ConfigError(f"class_weights must be 0 or more (0 leaves a class out of the loss); got {', '.join(bad)}")
    if not any(weights):
        raise ConfigError(f"class_weights are all 0 ({' '.join(f'{w:g}' for w in weights)}): no pixel would count "
                          "and every loss would be 0 / 0 (NaN); give the classes to learn a weight above 0")


def balanced_loss_weights(run: Run, counted: ClassPixels | None) -> torch.Tensor:
    """Class weights by the config's balancing method from the training split's pixel counts (those of the
    dataset check, or counted here for a generated dataset), computed on the main process and sent to the
    others under torchrun."""
    weights = torch.zeros(run.info.num_classes, dtype=torch.float32, device=run.runtime.device)
    if run.runtime.is_main:
        counted = counted if counted is not None else class_pixel_counts(run.train_set)
        values = balancing_weights(run.config.class_weights, counted, run.config.inverse_log_c)
        weights.copy_(torch.from_numpy(values))
        shown = ", ".join(f"{name} {w:.3g}" for name, w in zip(run.info.class_names, values, strict=True))
        log.info(f"class weights ({run.config.class_weights}): {shown}")
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


def training_spec(config: TrainConfig, info: DatasetInfo, inputs: tuple[str, ...] = ("rgb",),
                  start: ModelSpec | None = None) -> ModelSpec:
    """The spec of the net ``config`` trains on ``info``'s classes (one head per label set, one trunk per
    input): ImageNet's input for ImageNet weights, the starting net's (``start``) when there is one."""
    spec = ModelSpec(config.model, config.backbone, info.num_classes, config.width, config.geometry,
                     config.learnable_upsampling, config.dropout, extra_heads=info.head_classes[1:], inputs=inputs,
                     classes=info)
    if start is not None:
        return spec.replace(normalization=start.normalization,
                            transform_input=start.transform_input and spec.backbone in TRANSFORM_INPUT_BACKBONES)
    return imagenet_spec(spec) if config.imagenet_weights else spec


def build_training_model(config: TrainConfig, info: DatasetInfo, init: dict[str, Any] | None = None,
                         inputs: tuple[str, ...] = ("rgb",)) -> FCN:
    """The net of ``config`` for ``info`` (see :func:`training_spec`) with ImageNet weights or a starting
    net's weights (``init``, a checkpoint dict: its backbone, and the score rows of the classes both share)."""
    start = checkpoint_spec(init) if init is not None else None
    spec = training_spec(config, info, inputs, start)
    if start is not None and (start.backbone, start.width) != (spec.backbone, spec.width):
        raise ConfigError(f"the starting net (init_from {config.init_from}) is an {start.name} on {start.backbone} of "
                          f"width {start.width:g}, this run's {spec.name} is on {spec.backbone} of width "
                          f"{spec.width:g}: its weights fit only the same backbone and width (the model may differ: "
                          f"fcn32s -> fcn16s -> fcn8s); give --backbone {start.backbone} --width {start.width:g}, "
                          "or start from another net")
    if start is None:
        imagenet = config.imagenet_weights
        return fcn_from_imagenet(spec, None if imagenet == "default" else imagenet) if imagenet else build_model(spec)
    # The starting net's whole backbone replaces ImageNet weights, so they are not read.
    model = build_model(spec)
    old, new = start.classes.class_names, info.class_names
    init_from_coarser(model, init["model_state_dict"], classes=(old, new))
    if new != old:
        carried = [new[j] for _, j in matching_classes(old, new)]
        log.info(f"the starting net scored {len(old)} classes, this one {len(new)}: its backbone is "
                 f"kept, the score layers start at zero except for the {len(carried)} class(es) both share"
                 f"{': ' + ', '.join(carried) if carried else ''}")
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
    return torch.optim.SGD(groups, lr=lr, momentum=config.resolved_momentum())


def lr_factor(config: TrainConfig, iteration: int) -> float:
    """Linear warm-up, then poly decay (1 - t/T)^power or constant.

    The closed form, through LambdaLR: torch's PolynomialLR updates the rate multiplicatively (its chainable
    form), and on 16000 iterations at power 0.9 it gives 15161 rates that differ from this one in their last
    bits, which would change every run's numbers (and needs SequentialLR for the warm-up)."""
    if iteration < config.warmup_iterations:
        return (iteration + 1) / config.warmup_iterations
    if config.resolved_schedule() == "constant":
        return 1.0
    return max(0.0, 1 - iteration / config.iterations) ** config.poly_power


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int, reduction: str,
                      class_weights: torch.Tensor | None, heads: tuple[int, ...] | None = None) -> torch.Tensor:
    """Pixel-wise softmax cross-entropy; ``sum`` is the authors' "unnormalized" loss.

    A net with several ``heads`` (class counts; targets N x K x H x W) is trained on the sum of each head's
    loss, as the authors' SIFT Flow nets are; ``class_weights`` then weigh the first head's classes.
    """
    if heads is None or len(heads) == 1:
        return _cross_entropy(logits.float(), target, class_weights, ignore_index, reduction)
    parts = logits.float().split(heads, 1)
    return sum(_cross_entropy(part, target[:, k], class_weights if k == 0 else None, ignore_index, reduction)
               for k, part in enumerate(parts))


def _cross_entropy(logits: torch.Tensor, target: torch.Tensor, class_weights: torch.Tensor | None,
                   ignore_index: int, reduction: str) -> torch.Tensor:
    """Cross-entropy, 0 for a batch without a labelled pixel: a mean over none is NaN, which stopped the run as a
    diverged loss (a crop or an image that is all ignore). Still a function of the logits, so every process of
    a distributed run takes part in the gradients' sum."""
    if reduction == "mean" and not bool((target != ignore_index).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits, target, weight=class_weights, ignore_index=ignore_index, reduction=reduction)
