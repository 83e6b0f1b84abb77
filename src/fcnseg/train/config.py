"""The training configuration: one flat dataclass, read from YAML, flags and ``--set key=value``.

Each field's ``help`` metadata is the help text of its ``fcnseg train`` flag (the flags are generated from
the fields), and every value is type-checked with a one-line message naming the key, the expected type
and the value.
"""

from __future__ import annotations

import dataclasses
import logging
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fcnseg.checkpoint import checkpoint_spec, read_checkpoint
from fcnseg.data.balance import BALANCING, ENET_C
from fcnseg.data.registry import DATASETS
from fcnseg.errors import ConfigError, TrainingError, did_you_mean, unexpanded_home
from fcnseg.models import BACKBONES, MODELS
from fcnseg.models.fcn import GEOMETRIES
from fcnseg.models.weights import default_imagenet_problem
from fcnseg.pretrained import resolve
from fcnseg.ranges import (
    BELOW_ONE,
    BETWEEN_ZERO_AND_ONE,
    COUNT,
    FRACTION,
    NON_NEGATIVE,
    NON_NEGATIVE_COUNT,
    POSITIVE,
    SEED,
    Range,
    check_field,
    check_fields,
    check_type,
)
from fcnseg.yamlio import read_yaml_file

log = logging.getLogger(__name__)

# What a run takes from its starting net (init_from) unless the config or a flag says otherwise: what the
# starting weights fit, so that `--init-from NET --dataset folder ...` fine-tunes NET without restating it.
ARCHITECTURE = ("model", "backbone", "width", "geometry", "learnable_upsampling")

# The authors' fixed learning rates for the summed loss at batch size 1 (reference VOC recipe).
PAPER_LR = {"fcn32s": 1e-10, "fcn16s": 1e-12, "fcn8s": 1e-14, "fcn8s_atonce": 1e-10}
DEFAULT_MOMENTUM, PAPER_MOMENTUM = 0.9, 0.99
RECIPE_DEFAULTS = {"schedule"}  # choices whose default, None, is the recipe's
CHOICES = {
    "model": tuple(MODELS), "backbone": tuple(BACKBONES), "geometry": GEOMETRIES,
    "recipe": ("modern", "paper"), "optimizer": ("sgd", "adamw"), "schedule": ("poly", "constant"),
    "amp": ("none", "bf16", "fp16", "auto"),
}


def option(default: Any, help: str, **metadata: Any) -> Any:  # noqa: A002 - argparse's word
    """A config field with its command-line help (mutable defaults are copied per instance)."""
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **metadata})
    return field(default=default, metadata={"help": help, **metadata})


@dataclass
class TrainConfig:
    """Every training option. YAML config files hold these keys, flat; the command line overrides them."""

    # model
    model: str = option("fcn8s", "the net: " + ", ".join(MODELS))
    backbone: str = option("vgg16", "the classification net turned into an FCN: " + ", ".join(BACKBONES))
    width: float = option(1.0, "channel multiplier of the backbone (0.125 trains on a CPU)", range=POSITIVE)
    geometry: str = option("fast", "reference: the authors' pad-100-and-crop nets; fast: minimal padding")
    learnable_upsampling: bool = option(False, "train the upsampling kernels instead of frozen bilinear ones")
    dropout: float = option(0.5, "fc6/fc7 dropout probability (VGG16, AlexNet)", range=BELOW_ONE)
    init_from: str | None = option(None, "a coarser run's folder or .pth checkpoint to start from (staged), or "
                                          "a net shipped with fcnseg; the run takes its model, backbone, width and "
                                          "geometry unless given")
    imagenet_weights: str | None = option(None, "torchvision ImageNet weights: a .pth file, a URL or 'default' "
                                                "(torchvision's file of the backbone, for width 1 only)")
    # data
    dataset: str = option("synthetic", "dataset name: " + ", ".join(DATASETS))
    root: str | None = option(None, "the dataset's folder (not needed for synthetic)")
    train_split: str = option("train", "split to train on")
    val_split: str = option("val", "split to validate on")
    dataset_options: dict[str, Any] = option({}, "reader options as a YAML mapping, e.g. '{num_images: 200}' "
                                             "(merged key by key into the config file's)")
    crop_size: list[int] | None = option(None, "random crop height and width (unset: whole images)",
                                         metavar=("H", "W"), length=2, range=COUNT)
    scale_range: list[float] | None = option(None, "random rescaling range, e.g. 0.5 2.0", metavar=("MIN", "MAX"),
                                             length=2, range=POSITIVE)
    flip: bool = option(True, "random horizontal flips")
    color_jitter: float = option(0.0, "brightness, contrast and saturation jitter, 0 to 1 (0: none)", range=FRACTION)
    # Photometric changes for another day's light (fcnseg.data.transforms.ColorJitter, applied in this order).
    brightness: float | None = option(None, "brightness jitter: pixels scaled by a factor from [1 - x, 1 + x], 0 to 1 "
                                            "(default: color_jitter's)", range=FRACTION)
    contrast: float | None = option(None, "contrast jitter: distances from the mean grey scaled by a factor from "
                                          "[1 - x, 1 + x], 0 to 1 (default: color_jitter's)", range=FRACTION)
    saturation: float | None = option(None, "saturation jitter: distances from each pixel's grey scaled by a factor "
                                            "from [1 - x, 1 + x], 0 to 1 (default: color_jitter's)", range=FRACTION)
    hue: float = option(0.0, "hue turned by up to x of the colour circle, 0 to 0.5 (0: none)", range=Range(0, 0.5))
    gamma: float = option(0.0, "gamma from [1 / (1 + x), 1 + x], log-uniform: mid-tones darker or lighter, black and "
                               "white kept, 0 to 3 (0: none)", range=Range(0, 3))
    blur: float = option(0.0, "Gaussian blur of a standard deviation from [0, x] pixels, 0 to 10 (0: none)",
                         range=Range(0, 10))
    noise: float = option(0.0, "Gaussian pixel noise of a standard deviation from [0, x] grey levels (of 255), 0 to 64 "
                               "(0: none)", range=Range(0, 64))
    cutmix: float = option(0.0, "probability that a training image gets a box of another image of its batch pasted "
                                "in, with its labels (CutMix), 0 to 1 (0: none)", range=FRACTION)
    accept_only_class_zero: bool = option(False, "train on labels whose only class is 0 besides ignored pixels "
                                                 "(0/255 masks are refused unless 255 really means ignore)")
    batch_size: int = option(8, "images per step (per process under torchrun)", range=COUNT)
    workers: int = option(2, "data loading processes (one thread each)", range=NON_NEGATIVE_COUNT)
    keep_decoded: bool = option(True, "keep the decoded training images in memory rather than read them every "
                                      "epoch, where they take at most a quarter of the free memory")
    # optimisation
    recipe: str = option("modern", "modern: mean loss, momentum 0.9; paper: summed loss, momentum 0.99, "
                                   "fixed tiny lr, biases at 2x lr")
    optimizer: str = option("sgd", "sgd or adamw")
    lr: float | None = option(None, "learning rate (default: the recipe's)", range=POSITIVE)
    momentum: float = option(DEFAULT_MOMENTUM, "SGD momentum (the paper recipe uses 0.99)", range=BELOW_ONE)
    weight_decay: float = option(5e-4, "weight decay (not applied to biases)", range=NON_NEGATIVE)
    schedule: str | None = option(None, "poly: (1 - t/T)^power decay; constant (default: the recipe's: poly for "
                                        "modern, constant for paper, the authors' fixed rate)")
    poly_power: float = option(0.9, "power of the poly schedule", range=NON_NEGATIVE)
    warmup_iterations: int = option(0, "linear learning-rate warm-up iterations", range=NON_NEGATIVE_COUNT)
    class_weights: list[float] | str | None = option(
        None, "loss weight per class, in class order, or computed from the training labels: median_frequency, "
              "inverse_log", range=NON_NEGATIVE)
    inverse_log_c: float = option(ENET_C, "the constant c of inverse_log weights 1 / ln(c + share): ENet's 1.02, "
                                          "larger is gentler", range=Range(1, above=True))
    iterations: int = option(1000, "optimizer steps in all (a resumed run continues up to this)", range=COUNT)
    grad_accum: int = option(1, "micro-batches accumulated per step", range=COUNT)
    ema_decay: float | None = option(None, "keep an exponential moving average of the weights with this decay per "
                                           "step (e.g. 0.999); validation and checkpoints use the average",
                                     range=BETWEEN_ZERO_AND_ONE)
    amp: str = option("none", "mixed precision: none, bf16 (CPU or GPU) or fp16 (GPU, with a grad scaler); auto: bf16 "
                              "where the device computes it natively (AVX512-BF16 or AMX CPUs, GPUs with bf16), else "
                              "none. Weights, gradients and optimizer state stay float32")
    channels_last: bool = option(False, "channels-last memory format")
    # bookkeeping
    val_interval: int = option(200, "validate every N steps (and at the end)", range=COUNT)
    checkpoint_interval: int = option(200, "write last.pth every N steps (and at the end)", range=COUNT)
    log_interval: int = option(10, "log the loss to metrics.csv every N steps (and print a progress line then "
                                   "when the output is not a terminal)", range=COUNT)
    val_limit: int | None = option(None, "validate on the first N images only", range=COUNT)
    device: str = option("auto", "auto (a GPU when there is one), cpu, cuda or cuda:N")
    threads: int | None = option(None, "torch threads of each process (default: the usable cores)", range=COUNT)
    max_memory: str | int | None = option(None, "memory a training process may use, e.g. 12G (default: 80 percent "
                                                "of what is available): a training step estimated larger is "
                                                "refused, decoded images are kept only within a quarter of it, "
                                                "and validation runs in sliding windows where whole images would "
                                                "not fit what is left",
                                          metavar="SIZE")
    seed: int = option(0, "seed of the initialisation, sample order and augmentation", range=SEED)
    out: str = option("runs/exp", "the run's folder: checkpoints, metrics.csv, config.yaml")
    resume: bool = option(False, "continue the run in --out exactly where it stopped")
    overwrite: bool = option(False, "replace a run, or files fcnseg train did not write, in --out")

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        """Read a flat YAML file, then apply ``overrides`` (:func:`with_overrides`: each replaces the file's value, a
        ``dataset_options`` mapping is merged into the file's; a null value sets the option to null)."""
        path = Path(path)
        data = read_yaml_file(path, "config") or {}
        if not isinstance(data, dict):
            raise ConfigError(f"config {path} must be a mapping of option: value, got {type(data).__name__}")
        return cls.from_dict(with_overrides(data, overrides), source=str(path))

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> TrainConfig:
        """Check names, types and ranges of ``data`` and build the config; errors name ``source`` and the key."""
        values = check_options(data, source)
        # Read the starting net only when the run leaves part of its shape unsaid (learnable_upsampling alone
        # does not count: staged configs name the other four and stay readable before the starting run exists).
        if values.get("init_from") and not all(key in values for key in ARCHITECTURE[:4]):
            # A resume takes it from its own last.pth: the starting net may be gone or replaced since.
            last = Path(values.get("out", cls.out)) / "last.pth"
            values = {**starting_architecture(str(last) if values.get("resume") and last.is_file() else
                                              values["init_from"]), **values}
        config = cls(**values)
        config.validate(source)
        return config

    def validate(self, source: str = "config") -> None:
        """Range and choice checks (types are checked by :meth:`from_dict`)."""
        for name in CHOICES:
            check_choice(name, getattr(self, name), source)
        if self.recipe == "paper":
            self._check_paper_recipe(source)
        for item in dataclasses.fields(self):
            length, value = item.metadata.get("length"), getattr(self, item.name)
            if length and value is not None and len(value) != length:
                raise ConfigError(f"{source}: {item.name} takes {length} values, got {value!r}")
        check_fields(self, f"{source}: ")  # each number in its range: no nan, inf, negative rate, ...
        if not str(self.out).strip():  # --out "$OUT" with the variable unset: the current folder
            raise ConfigError(f"{source}: out is empty (an unset shell variable?): give the run's folder")
        if problem := unexpanded_home(self.out):  # train's --out is this field, not options.output_path
            raise ConfigError(f"{source}: out {problem}")
        if self.scale_range is not None and self.scale_range[0] > self.scale_range[1]:
            raise ConfigError(f"{source}: scale_range is MIN MAX, got {self.scale_range[0]:g} above "
                              f"{self.scale_range[1]:g}")
        if self.class_weights == []:  # it meant "no weights" where [1, 1] for 8 classes is refused
            raise ConfigError(f"{source}: class_weights is an empty list: give one weight per class, or leave it "
                              "unset (null) for none")
        if isinstance(self.class_weights, list) and self.class_weights and not any(self.class_weights):
            raise ConfigError(f"{source}: class_weights are all 0, so no pixel would count in the loss; give the "
                              "classes to learn a weight above 0")
        if isinstance(self.class_weights, str) and self.class_weights not in BALANCING:
            raise ConfigError(f"{source}: class_weights must be a list of numbers or one of {', '.join(BALANCING)}; "
                              f"got {self.class_weights!r}")
        if self.imagenet_weights == "default" and self.init_from is None and \
                (problem := default_imagenet_problem(self.backbone, self.width)):  # before the download
            raise ConfigError(f"{source}: imagenet_weights default: {problem}")
        if self.cutmix and self.batch_size < 2:
            raise ConfigError(f"{source}: cutmix pastes boxes between the images of a batch, and batch_size is 1: "
                              "set batch_size to 2 or more, or cutmix to 0")
        if self.inverse_log_c != ENET_C and self.class_weights != "inverse_log":
            weights = repr(self.class_weights) if self.class_weights else "not set"
            raise ConfigError(f"{source}: inverse_log_c applies to class_weights: inverse_log only; "
                              f"class_weights is {weights}")

    def _check_paper_recipe(self, source: str) -> None:
        """The paper recipe fixes its optimizer: options that it would ignore are refused, not dropped."""
        if self.optimizer != "sgd":
            raise ConfigError(f"{source}: recipe paper is the authors' SGD with momentum 0.99 (at a learning rate of "
                              f"1e-10 to 1e-14); optimizer {self.optimizer} would not be it: use recipe modern")
        if self.momentum != PAPER_MOMENTUM and self.momentum != DEFAULT_MOMENTUM:
            raise ConfigError(f"{source}: recipe paper uses the authors' momentum {PAPER_MOMENTUM}, so momentum "
                              f"{self.momentum:g} would be ignored: drop it, or use recipe modern")

    def resolved_schedule(self) -> str:
        """``schedule``, or the recipe's: the authors kept their rate fixed."""
        return self.schedule or ("constant" if self.recipe == "paper" else "poly")

    def resolved_momentum(self) -> float:
        return PAPER_MOMENTUM if self.recipe == "paper" else self.momentum

    def resolved_lr(self) -> float:
        if self.lr is not None:
            return self.lr
        if self.recipe == "paper":
            return PAPER_LR[self.model]
        return 0.01 if self.optimizer == "sgd" else 1e-3

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def run_options(self) -> dict[str, Any]:
        """The options that make the run, as config.yaml and the checkpoints keep them: without the flags of one
        invocation (``resume``, ``overwrite``), so that ``--config RUN/config.yaml`` starts a new run even after
        the run was resumed."""
        return {key: value for key, value in self.to_dict().items() if key not in PER_INVOCATION}


# Flags that say how to treat the run folder this time, not what the run is.
PER_INVOCATION = ("resume", "overwrite")


def with_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``data`` (a config file's options) with ``overrides`` (the command line's) applied: each value replaces
    the option's, but a mapping given for an option that ``data`` holds as a mapping (``dataset_options``) is
    merged into it key by key: ``--dataset-options '{num_images: 8}'`` keeps the config's ``class_map``."""
    merged = {**data, **overrides}
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            merged[key] = {**data[key], **value}
    return merged


def check_options(data: dict[str, Any], source: str) -> dict[str, Any]:
    """Each option of ``data`` alone, by name, type and range, as its type; errors name ``source`` and the key
    (the command line's options are checked before they are merged into a config file's, so that a bad flag
    is reported as the command line's)."""
    fields = {item.name: item for item in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{source}: unknown option(s) {', '.join(unknown)}{did_you_mean(unknown, fields)}; known: "
                          f"{', '.join(sorted(fields))}")
    hints = typing.get_type_hints(TrainConfig)
    values = {}
    for key, value in data.items():
        values[key] = check_type(value, hints[key], f"{source}: {key}")
        check_field(fields[key], values[key], f"{source}: {key}")
        if key in CHOICES:
            check_choice(key, values[key], source)
    return values


def check_choice(name: str, value: Any, source: str) -> None:
    """An option with a fixed set of values (``CHOICES``) holds one of them (or None where that is its default:
    the recipe's)."""
    if value is None and name in RECIPE_DEFAULTS:
        return
    if value not in CHOICES[name]:
        raise ConfigError(f"{source}: {name} must be one of {', '.join(CHOICES[name])}; got {value!r}")


def resolve_init_checkpoint(path: str) -> Path:
    """A run folder (its best.pth, else last.pth), a checkpoint file, or the name of a net shipped with fcnseg
    (:func:`fcnseg.pretrained.resolve`; the config keeps the name, so a resumed run finds it again)."""
    candidate = resolve(path)
    if candidate.is_dir():
        for name in ("best.pth", "last.pth"):
            if (candidate / name).is_file():
                return candidate / name
        raise TrainingError(f"{candidate} holds no best.pth or last.pth to initialise from")
    return candidate


def starting_architecture(init_from: str) -> dict[str, Any]:
    """The :data:`ARCHITECTURE` options of the net ``init_from`` names (read from its checkpoint's spec)."""
    # The spec alone is needed (run.prepare reads the weights): the tensors stay mapped, never read.
    spec = checkpoint_spec(read_checkpoint(resolve_init_checkpoint(init_from), mmap=True), init_from)
    found = {"model": spec.name, "backbone": spec.backbone, "width": spec.width, "geometry": spec.geometry,
             "learnable_upsampling": spec.learnable_upsampling}
    log.debug(f"from the starting net {init_from}: {found}")
    return found
