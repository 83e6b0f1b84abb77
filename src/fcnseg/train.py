"""Training: a flat config, one loop for one CPU, one GPU or many (torchrun), exact resume.

Design points:

* Augmentation randomness is a function of ``(seed, epoch, sample index)`` (see :class:`TrainSamples`),
  and the sample order of ``(seed, epoch)`` (see :class:`EpochSampler`), so a resumed run sees exactly the
  batches the uninterrupted run would have seen, whatever the number of loader workers.
* Checkpoints are written atomically; ``last.pth`` holds model, optimizer, scheduler, grad scaler, RNG
  states and the position in the data, ``best.pth`` the best model by validation mean IU.
* A non-finite loss stops the run before the optimizer step, leaving the last good checkpoint intact.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from fcnseg.checkpoint import atomic_save, model_checkpoint, read_checkpoint, unwrap
from fcnseg.data.base import SegmentationDataset, to_tensors
from fcnseg.data.collate import PadCollate
from fcnseg.data.registry import build_dataset
from fcnseg.data.transforms import train_transforms
from fcnseg.models import build_model
from fcnseg.models.fcn import FCN
from fcnseg.models.weights import init_from_coarser, load_imagenet_weights

# The authors' fixed learning rates for the summed loss at batch size 1 (reference VOC recipe).
PAPER_LR = {"fcn32s": 1e-10, "fcn16s": 1e-12, "fcn8s": 1e-14, "fcn8s_atonce": 1e-10}


class TrainingError(RuntimeError):
    """The run cannot go on (e.g. the loss became NaN); the message says why and what to try."""


@dataclass
class TrainConfig:
    """Every training option. YAML config files hold these keys, flat; the command line overrides them."""

    # model
    model: str = "fcn8s"
    backbone: str = "vgg16"
    width: float = 1.0
    geometry: str = "fast"
    learnable_upsampling: bool = False
    dropout: float = 0.5  # fc6/fc7 dropout (VGG16, AlexNet)
    init_from: str | None = None  # a coarser run's folder or checkpoint (staged training)
    imagenet_weights: str | None = None  # file or URL of torchvision ImageNet weights; "default" = official
    # data
    dataset: str = "synthetic"
    root: str | None = None
    train_split: str = "train"
    val_split: str = "val"
    dataset_options: dict[str, Any] = field(default_factory=dict)  # e.g. num_images for synthetic
    crop_size: list[int] | None = None  # [height, width]; None keeps whole images
    scale_range: list[float] | None = None  # e.g. [0.5, 2.0]
    flip: bool = True
    color_jitter: float = 0.0
    batch_size: int = 8
    workers: int = 2
    # optimisation
    recipe: str = "modern"  # "modern" (mean loss) or "paper" (summed loss, momentum 0.99, 2x bias lr)
    optimizer: str = "sgd"  # sgd | adamw
    lr: float | None = None  # None: the recipe's default
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "poly"  # poly | constant
    poly_power: float = 0.9
    warmup_iterations: int = 0
    class_weights: list[float] | None = None
    iterations: int = 1000
    grad_accum: int = 1
    amp: str = "none"  # none | bf16 | fp16 (fp16 on CUDA only)
    channels_last: bool = False
    # bookkeeping
    val_interval: int = 200
    checkpoint_interval: int = 200
    log_interval: int = 10
    val_limit: int | None = None  # evaluate on the first N validation images only
    device: str = "auto"  # auto | cpu | cuda
    seed: int = 0
    out: str = "runs/exp"
    resume: bool = False
    progress: bool = True

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        """Read a flat YAML file; unknown keys are an error naming them."""
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as error:
            raise ValueError(f"cannot read config {path}: {error}") from None
        if not isinstance(data, dict):
            raise ValueError(f"config {path} must be a mapping of option: value")
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{source}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        config = cls(**data)
        config.validate()
        return config

    def validate(self) -> None:
        choices = {"recipe": ("modern", "paper"), "optimizer": ("sgd", "adamw"), "schedule": ("poly", "constant"),
                   "amp": ("none", "bf16", "fp16"), "device": ("auto", "cpu", "cuda"),
                   "geometry": ("reference", "fast")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("iterations", "batch_size", "grad_accum", "val_interval", "checkpoint_interval", "log_interval"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")

    def resolved_lr(self) -> float:
        if self.lr is not None:
            return self.lr
        if self.recipe == "paper":
            return PAPER_LR[self.model]
        return 0.01 if self.optimizer == "sgd" else 1e-3

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------------------------------------- data
class TrainSamples(Dataset):
    """A dataset with augmentation drawn from ``np.random.default_rng((seed, epoch, index))``: the same
    sample in the same epoch is always augmented the same way, in any worker, before or after a resume."""

    def __init__(self, base: SegmentationDataset, transform, seed: int) -> None:
        self.base, self.transform, self.seed, self.epoch = base, transform, seed, 0

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = self.base.load(index)
        if self.transform is not None:
            rng = np.random.default_rng((self.seed, self.epoch, index))
            image, label = self.transform(image, label, rng=rng)
        return to_tensors(image, label, self.base.normalization)


class EpochSampler(Sampler[int]):
    """Shuffled order from ``(seed, epoch)``, sharded over ranks (padded by repeating, as training
    needs equal shard sizes), starting ``start`` samples into this rank's shard (for resuming)."""

    def __init__(self, size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.size, self.seed, self.rank, self.world_size = size, seed, rank, world_size
        self.epoch, self.start = 0, 0
        self.per_rank = math.ceil(size / world_size)

    def set_position(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.size, generator=generator).tolist()
        order += order[: self.per_rank * self.world_size - self.size]
        return iter(order[self.rank::self.world_size][self.start:])

    def __len__(self) -> int:
        return self.per_rank - self.start


# ------------------------------------------------------------------------------------- runtime context
@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup_runtime(device: str) -> Runtime:
    """Single process, or a torchrun process group (NCCL on GPUs, gloo on CPUs)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise TrainingError("device cuda was asked for but no CUDA GPU is available; use --device cpu")
    if world_size == 1:
        return Runtime(torch.device(device))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
    return Runtime(torch.device(device, local_rank) if device == "cuda" else torch.device("cpu"),
                   rank, world_size, local_rank)


# ------------------------------------------------------------------------------------------ optimiser
def parameter_groups(model: nn.Module, config: TrainConfig, lr: float) -> list[dict[str, Any]]:
    """Paper recipe: biases at twice the learning rate and without weight decay (the authors' nets)."""
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
                      class_weights: torch.Tensor | None) -> torch.Tensor:
    """Pixel-wise softmax cross-entropy; ``sum`` is the authors' "unnormalized" loss."""
    return F.cross_entropy(logits.float(), target, weight=class_weights, ignore_index=ignore_index,
                           reduction=reduction)


# ------------------------------------------------------------------------------------------------ model
def resolve_init_checkpoint(path: str) -> Path:
    """A run folder (its best.pth, else last.pth) or a checkpoint file."""
    candidate = Path(path)
    if candidate.is_dir():
        for name in ("best.pth", "last.pth"):
            if (candidate / name).is_file():
                return candidate / name
        raise TrainingError(f"{candidate} holds no best.pth or last.pth to initialise from")
    return candidate


def build_training_model(config: TrainConfig, num_classes: int) -> FCN:
    model = build_model(config.model, backbone=config.backbone, num_classes=num_classes, width=config.width,
                        geometry=config.geometry, learnable_upsampling=config.learnable_upsampling,
                        dropout=config.dropout)
    if config.imagenet_weights:
        load_imagenet_weights(model, None if config.imagenet_weights == "default" else config.imagenet_weights)
    if config.init_from:
        data = read_checkpoint(resolve_init_checkpoint(config.init_from))
        init_from_coarser(model, data["model_state_dict"])
        model.backbone.input_normalization = data.get("normalization", model.backbone.input_normalization)
    return model


# ------------------------------------------------------------------------------------------- progress
class Progress:
    """One status line: iteration, loss, learning rate, throughput, ETA (in place on a terminal)."""

    def __init__(self, total: int, enabled: bool, every: int) -> None:
        self.total, self.enabled, self.every = total, enabled, every
        self.tty = sys.stderr.isatty()
        self.start = time.perf_counter()
        self.done_at_start: int | None = None

    def update(self, iteration: int, loss: float, lr: float, images_per_s: float) -> None:
        if not self.enabled:
            return
        if self.done_at_start is None:
            self.done_at_start, self.start = iteration - 1, time.perf_counter()
        if not self.tty and iteration % self.every and iteration != self.total:
            return
        elapsed = time.perf_counter() - self.start
        rate = (iteration - self.done_at_start) / max(elapsed, 1e-9)
        eta = (self.total - iteration) / max(rate, 1e-9)
        line = (f"it {iteration}/{self.total} loss {loss:.4f} lr {lr:.2e} {images_per_s:.1f} img/s "
                f"ETA {int(eta // 60)}m{int(eta % 60):02d}s")
        print(("\r" + line.ljust(80)) if self.tty else line, end="" if self.tty else "\n", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.enabled and self.tty:
            print(file=sys.stderr)


class CsvLog:
    """Append-only CSV log (iteration, loss, lr, img/s, and validation metrics when present)."""

    FIELDS = ["iteration", "epoch", "loss", "lr", "images_per_s", "pixel_acc", "mean_acc", "mean_iu", "fw_iu"]

    def __init__(self, path: Path, enabled: bool, resume_from: int | None = None) -> None:
        self.path, self.enabled = path, enabled
        if not enabled:
            return
        kept: list[list[str]] = []
        if resume_from is not None and path.exists():  # drop rows logged after the checkpoint resumed from
            with path.open(newline="") as handle:
                kept = [row for row in list(csv.reader(handle))[1:] if row and int(row[0]) <= resume_from]
        with path.open("w", newline="") as handle:
            csv.writer(handle).writerows([self.FIELDS, *kept])

    def write(self, **row: Any) -> None:
        if self.enabled:
            with self.path.open("a", newline="") as handle:
                csv.writer(handle).writerow([row.get(name, "") for name in self.FIELDS])


def _tensorboard(out: Path, enabled: bool):
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # optional: CSV logs always exist
        print("fcnseg train: tensorboard is not installed, logging to metrics.csv only "
              "(pip install tensorboard for TensorBoard logs)", file=sys.stderr)
        return None
    return SummaryWriter(str(out / "tensorboard"))


# ------------------------------------------------------------------------------------------ checkpoint
def rng_state() -> dict[str, Any]:
    """Every RNG a training step draws from, as tensors and plain lists (loadable with weights_only)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, python_state, gauss_next = random.getstate()
    state = {"torch": torch.get_rng_state(), "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
             "python": [version, list(python_state), gauss_next]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, python_state, gauss_next = state["python"]
    random.setstate((version, tuple(python_state), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------------------------------------ train
def train(config: TrainConfig) -> dict[str, Any]:
    """Run (or resume) training; returns the final validation scores and the paths written."""
    runtime = setup_runtime(config.device)
    out = Path(config.out)
    if runtime.is_main:
        out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    np.random.seed(config.seed)

    options = dict(config.dataset_options)
    base = build_dataset(config.dataset, config.root, config.train_split, normalization="imagenet", **options)
    info = base.info
    model = build_training_model(config, info.num_classes)
    # The dataset must feed what the weights expect (Caffe BGR for the authors' weights).
    base.normalization = model.backbone.input_normalization
    val = build_dataset(config.dataset, config.root, config.val_split, normalization=base.normalization, **options)

    transform = None
    if config.crop_size or config.scale_range or config.flip or config.color_jitter:
        transform = train_transforms(tuple(config.crop_size) if config.crop_size else None,
                                     scale_range=tuple(config.scale_range) if config.scale_range else None,
                                     flip=config.flip, color_jitter=config.color_jitter,
                                     ignore_index=info.ignore_index)
    samples = TrainSamples(base, transform, config.seed)
    sampler = EpochSampler(len(samples), config.seed, runtime.rank, runtime.world_size)
    loader_kwargs = {"batch_size": config.batch_size, "sampler": sampler, "num_workers": config.workers,
                     "collate_fn": PadCollate(info.ignore_index), "drop_last": False,
                     "pin_memory": runtime.device.type == "cuda"}
    batches_per_epoch = math.ceil(sampler.per_rank / config.batch_size)

    model.to(runtime.device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    # SyncBatchNorm runs on GPUs only; CPU processes on gloo keep per-process batch statistics.
    if runtime.distributed and runtime.device.type == "cuda" and any(isinstance(m, nn.BatchNorm2d)
                                                                     for m in model.modules()):
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    optimizer = build_optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(config, it))
    if config.amp == "fp16" and runtime.device.type != "cuda":
        raise TrainingError("amp fp16 needs a CUDA GPU (use --amp bf16 on the CPU)")
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=config.amp == "fp16")
    class_weights = (torch.tensor(config.class_weights, dtype=torch.float32, device=runtime.device)
                     if config.class_weights else None)
    if class_weights is not None and len(class_weights) != info.num_classes:
        raise ValueError(f"class_weights has {len(class_weights)} entries for {info.num_classes} classes")

    iteration, best_mean_iu = 0, -1.0
    last_path, best_path = out / "last.pth", out / "best.pth"
    if not config.resume and last_path.is_file():
        raise TrainingError(f"{out} already holds a run ({last_path}); pass --resume to continue it, or choose "
                            "another --out")
    if config.resume:
        if not last_path.is_file():
            raise TrainingError(f"--resume: no checkpoint at {last_path}; start without --resume")
        state = read_checkpoint(last_path)
        unwrap(model).load_state_dict(state["model_state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        iteration, best_mean_iu = state["iteration"], state["best_mean_iu"]
        restore_rng_state(state["rng"][runtime.rank] if runtime.rank < len(state["rng"]) else state["rng"][0])
    if runtime.is_main:
        (out / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))

    train_model: nn.Module = model
    if runtime.distributed:
        device_ids = [runtime.local_rank] if runtime.device.type == "cuda" else None
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    reduction = "sum" if config.recipe == "paper" else "mean"
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.amp)
    log = CsvLog(out / "metrics.csv", runtime.is_main, iteration if config.resume else None)
    board = _tensorboard(out, runtime.is_main)
    progress = Progress(config.iterations, config.progress and runtime.is_main, config.log_interval)
    scores: dict[str, Any] = {}

    def save_last() -> None:
        rngs = gather_objects(rng_state(), runtime)
        if runtime.is_main:
            state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                     "scaler": scaler.state_dict(), "iteration": iteration, "best_mean_iu": best_mean_iu,
                     "rng": rngs, "config": config.to_dict()}
            atomic_save(model_checkpoint(model, info, **state), last_path)

    micro_batches = iteration * config.grad_accum
    epoch, position = divmod(micro_batches, batches_per_epoch)
    train_model.train()
    window_start, window_images = time.perf_counter(), 0
    while iteration < config.iterations:
        samples.epoch = epoch
        sampler.set_position(epoch, position * config.batch_size)
        # Its own generator: creating a loader must not draw from the global RNG that dropout uses, or a
        # resumed run (which creates one more loader, mid-epoch) would drift from the uninterrupted one.
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
        for images, labels in DataLoader(samples, generator=generator, **loader_kwargs):
            images = images.to(runtime.device, non_blocking=True)
            labels = labels.to(runtime.device, non_blocking=True)
            if config.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast(runtime.device.type, dtype=autocast_dtype or torch.float32,
                                enabled=autocast_dtype is not None):
                logits = train_model(images)
            loss = segmentation_loss(logits, labels, info.ignore_index, reduction, class_weights)
            if not torch.isfinite(loss):
                progress.close()
                raise TrainingError(
                    f"the loss became {loss.item()} at iteration {iteration + 1}; stopped before updating the "
                    f"weights. The last good checkpoint is {last_path if last_path.exists() else '(none yet)'}. "
                    f"Try a lower learning rate (now {optimizer.param_groups[0]['lr']:.3g}), --amp none, or check "
                    "the labels (values outside the classes?).")
            scaler.scale(loss / config.grad_accum).backward()
            micro_batches += 1
            window_images += images.shape[0] * runtime.world_size
            if micro_batches % config.grad_accum:
                continue
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            iteration += 1
            lr = optimizer.param_groups[0]["lr"]
            now = time.perf_counter()
            throughput = window_images / max(now - window_start, 1e-9)
            progress.update(iteration, loss.item(), lr, throughput)
            if iteration % config.log_interval == 0 or iteration == config.iterations:
                log.write(iteration=iteration, epoch=epoch, loss=f"{loss.item():.6f}", lr=f"{lr:.6g}",
                          images_per_s=f"{throughput:.2f}")
                if board:
                    board.add_scalar("train/loss", loss.item(), iteration)
                    board.add_scalar("train/lr", lr, iteration)
                window_start, window_images = now, 0
            if iteration % config.val_interval == 0 or iteration == config.iterations:
                scores = validate(model, val, info, config, runtime)
                train_model.train()
                log.write(iteration=iteration, epoch=epoch, **{k: f"{scores[k]:.6f}" for k in
                                                                ("pixel_acc", "mean_acc", "mean_iu", "fw_iu")})
                if board:
                    for key in ("pixel_acc", "mean_acc", "mean_iu", "fw_iu"):
                        board.add_scalar(f"val/{key}", scores[key], iteration)
                if scores["mean_iu"] > best_mean_iu:
                    best_mean_iu = scores["mean_iu"]
                    if runtime.is_main:
                        atomic_save(model_checkpoint(model, info, iteration=iteration, mean_iu=best_mean_iu,
                                                     config=config.to_dict()), best_path)
            if iteration % config.checkpoint_interval == 0 or iteration == config.iterations:
                save_last()
            if iteration >= config.iterations:
                break
        epoch, position = epoch + 1, 0
    progress.close()
    if board:
        board.close()
    return {"scores": scores, "best_mean_iu": best_mean_iu, "last": str(last_path), "best": str(best_path),
            "iterations": iteration}


def gather_objects(obj: Any, runtime: Runtime) -> list[Any]:
    """Every rank's ``obj`` on every rank (RNG states are per process)."""
    if not runtime.distributed:
        return [obj]
    gathered: list[Any] = [None] * runtime.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def validate(model: nn.Module, dataset: SegmentationDataset, info, config: TrainConfig, runtime: Runtime) -> dict:
    """Whole-image validation over the full set (sharded across ranks without repeats)."""
    from torch.utils.data import Subset

    from fcnseg.evaluate import evaluate

    if config.val_limit:
        dataset = Subset(dataset, range(min(config.val_limit, len(dataset))))
    model.eval()
    with torch.no_grad():
        return evaluate(model, dataset, info.num_classes, info.ignore_index, device=runtime.device, progress=False,
                        distributed=runtime.distributed)
