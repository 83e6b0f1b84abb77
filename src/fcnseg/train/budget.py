"""Training memory bounded by an estimate: a step that would not fit is refused in one line before it starts.

The estimate (:func:`fcnseg.memory.training_bytes`) covers the net's weights, gradients and optimizer state,
the activations kept for the backward pass, the loss and the batch on the training device, and the data
pipeline's buffers on the host. With ``crop_size`` the step is known before any data is read, and it is
checked before the first loader starts (a crop is padded in numpy in the loader: a crop size no memory
holds would otherwise end in a numpy traceback, or in gigabytes per sample); whole images are checked as
each larger batch arrives, before the net runs on it.

The budget is ``max_memory``, or 80% of the memory available when training starts (shared among the
processes of a CPU run under torchrun); on a GPU the device part is checked against the GPU's memory and
the data pipeline against the host's. Validation runs each batch of whole images in sliding windows where
its estimate (:func:`fcnseg.memory.fit`) would not fit what the budget leaves beside the training state.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from fcnseg.errors import ConfigError, LimitError
from fcnseg.inference import InferenceOptions
from fcnseg.memory import default_budget, fit, format_apart, format_bytes, parameter_bytes, parse_size, training_bytes
from fcnseg.models.spec import ModelSpec
from fcnseg.runtime import Runtime
from fcnseg.train.config import TrainConfig

log = logging.getLogger(__name__)


def configured_budget(config: TrainConfig) -> int | None:
    """``max_memory`` in bytes (None: not set); a ConfigError naming the option for what is not a size."""
    if config.max_memory is None:
        return None
    try:
        return parse_size(str(config.max_memory))
    except ConfigError as error:
        raise ConfigError(f"max_memory: {error}") from None


def budgets(config: TrainConfig, runtime: Runtime) -> tuple[int, int]:
    """(budget of the training device, budget of the data pipeline on the host), in bytes."""
    asked = configured_budget(config)
    host = default_budget("cpu") // runtime.world_size  # a machine's processes share its memory
    if runtime.device.type == "cpu":
        budget = asked if asked is not None else host
        return budget, budget
    return (asked if asked is not None else default_budget(runtime.device)), host


def check_step_memory(config: TrainConfig, spec: ModelSpec, runtime: Runtime, batch: int, height: int,
                      width: int) -> None:
    """Refuse, in one line naming the estimate, the budget and the fix, a training step of ``batch`` samples of
    ``height x width`` that would need more memory than the budget (see :func:`budgets`)."""
    device_budget, host_budget = budgets(config, runtime)
    slots = 2 if config.optimizer == "adamw" else 1
    device, data = training_bytes(spec, batch, height, width, optimizer_slots=slots,
                                  ema=config.ema_decay is not None, workers=config.workers)
    on_cpu = runtime.device.type == "cpu"
    if (device + data <= device_budget) if on_cpu else (device <= device_budget and data <= host_budget):
        return
    step = (f"a training step on {batch} crop(s) of {height}x{width} (--batch-size {config.batch_size}, --crop-size "
            f"{height} {width})" if config.crop_size else
            f"a training step on a batch of {batch} whole image(s) padded to {height}x{width} (no --crop-size)")
    if on_cpu:
        over, limit = format_apart(device + data, device_budget)
        need = (f"about {over} (net {format_bytes(device)}, data pipeline "
                f"{format_bytes(data)}), more than the memory budget of {limit}")
    elif device > device_budget:
        over, limit = format_apart(device, device_budget)
        need = f"about {over} of {runtime.device.type.upper()} memory, more than the budget of {limit}"
    else:
        over, limit = format_apart(data, host_budget)
        need = (f"about {over} of host memory for the data pipeline ({config.workers} worker(s)), "
                f"more than the budget of {limit}")
    smaller = "a smaller --crop-size or --batch-size" if config.crop_size else "--crop-size or a smaller --batch-size"
    if config.workers and data > device:  # the loader's buffers weigh most: each worker holds batches of its own
        smaller = f"fewer --workers (now {config.workers}), {smaller}"
    raise LimitError(f"{step} would need {need}: use {smaller}, or raise --max-memory if this machine has the "
                     "memory")


def validation_planner(config: TrainConfig, spec: ModelSpec,
                       runtime: Runtime) -> Callable[[int, int, int, InferenceOptions], InferenceOptions]:
    """``evaluate``'s planner for validation during training: a batch whose inference would not fit the memory
    left is run in sliding windows (said once). Left: with ``max_memory``, the budget less what training holds
    meanwhile (weights, gradients, optimizer state, the decoded images kept); without, the device's share of
    what is available when the batch comes (:func:`budgets`: a CPU run's processes share the machine; what
    training holds is in use already)."""
    asked = configured_budget(config)
    if asked is not None:  # without it, what training holds is in use already when the free memory is read
        held = parameter_bytes(spec, 2 if config.optimizer == "adamw" else 1, ema=config.ema_decay is not None)
        held += asked // 4 if config.keep_decoded else 0  # the most training keeps decoded (train.data.keep_decoded)
    told: list[str] = []

    def plan(batch: int, height: int, width: int, options: InferenceOptions) -> InferenceOptions:
        left = budgets(config, runtime)[0] if asked is None else max(asked - held, 0)
        fitted, note = fit(spec, batch, height, width, options, left, name="a validation image",
                           channels_last=config.channels_last)
        if note and not told:
            told.append(note)
            log.info(f"{note} (the budget: what --max-memory {format_bytes(asked)} leaves beside the training "
                     "state; said once)" if asked is not None else f"{note} (said once)")
        return fitted

    return plan
