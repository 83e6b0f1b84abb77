"""The training loop, in parts: one micro-batch forward/backward, one optimizer step, validation, and
:func:`train`, which runs them with checkpoints and logs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, NoReturn

import torch
from torch.utils.data import Subset

from fcnseg.data.balance import ClassPixels
from fcnseg.data.check import check_dataset, warn_if_one_class
from fcnseg.errors import DataError, TrainingError, user_message
from fcnseg.evaluate import evaluate
from fcnseg.outputs import refuse_if_held
from fcnseg.runtime import flush_denormals, keep_freed_memory, start, under_torchrun
from fcnseg.signals import deferred_interrupt
from fcnseg.train.budget import check_step_memory, configured_budget, validation_planner
from fcnseg.train.config import TrainConfig
from fcnseg.train.data import keep_decoded, micro_batches
from fcnseg.train.elastic import after_restart, killed_for_a_test
from fcnseg.train.ema import update_ema
from fcnseg.train.folder import check_new_run, check_shared, clear_replaced, finished, hold, open_run
from fcnseg.train.log import RunLog
from fcnseg.train.run import Run, balanced_loss_weights, build_run, segmentation_loss
from fcnseg.train.state import restore, save_best, save_last, write_config

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
log = logging.getLogger(__name__)


def train(config: TrainConfig, save_on_interrupt: bool = True) -> dict[str, Any]:
    """Run (or resume) training; returns the final validation scores and the paths written.

    With ``save_on_interrupt``, a first Ctrl+C (in one process, outside torchrun) ends the run when its step
    ends, after saving ``last.pth`` there, as KeyboardInterrupt; without, or on a second one, it stops at once.

    Before iteration 1: the run folder is locked and checked (:mod:`fcnseg.train.folder`), and both
    splits are read once (:func:`fcnseg.data.check.check_dataset`), so bad data costs no training time.
    Under torchrun, a restart after a process died continues the run (:mod:`fcnseg.train.elastic`).
    """
    configured_budget(config)  # a max_memory that is not a size is refused before the run folder is touched
    runtime = start(config.device, config.threads, reproducible=True)  # resume is exact on GPUs too
    keep_freed_memory()  # the same buffers every step: reused, not mapped and zero-filled again
    config = after_restart(config, runtime)
    replaced: list[Path] = []
    if not config.resume:  # before the lock file is made: a refused folder stays as it was
        if runtime.is_main:
            refuse_if_held(config.out)
        replaced = check_new_run(config)  # every rank: each stops here rather than wait for a main that stopped
    with hold(config, runtime), flush_denormals():  # tiny gradients: slow arithmetic unless flushed to 0
        check_shared(config, runtime)
        resumed = open_run(config)
        if resumed is not None and finished(resumed, config):
            return {"scores": {}, "best_mean_iu": resumed["best_mean_iu"], "last": str(Path(config.out) / "last.pth"),
                    "best": str(Path(config.out) / "best.pth"), "iterations": resumed["iteration"]}
        run = build_run(config, runtime, resumed)
        check_data(run)
        if resumed is not None:
            restore(run, resumed)
        clear_replaced(runtime, replaced)
        write_config(run)
        log = RunLog(run)
        try:
            scores = run_iterations(run, log, save_on_interrupt)
        finally:
            log.close()
    return {"scores": scores, "best_mean_iu": run.best_mean_iu, "last": str(run.last_path),
            "best": str(run.best_path), "iterations": run.iteration}


def check_data(run: Run) -> None:
    """Read both splits once before training (in the loader's workers) and report every bad sample at once;
    class weights to balance come from the training split's pixels counted on the way."""
    config, counted = run.config, None
    if config.keep_decoded:  # first: the check then reads the samples from memory, each file decoded once
        keep_decoded(run.train_set, config.workers, configured_budget(config))
    if run.runtime.is_main:  # one process reads; a DataError stops the others at the process group's end
        counted = _check_splits(run)
    if isinstance(config.class_weights, str):
        run.class_weights = balanced_loss_weights(run, counted)


def _check_splits(run: Run) -> ClassPixels | None:
    """Both splits checked, their problems reported in one DataError (the validation split's were found only by
    the next run after the training split's were mended; one both share is said once); the training split's
    class pixels."""
    config, problems, counted = run.config, {}, {}
    for dataset, what, limit in ((run.train_set, "the training split", None),
                                 (run.val_set, "the validation split", config.val_limit)):
        try:
            counted[what] = check_dataset(dataset, what, config.workers, limit=limit,
                                          accept_only_class_zero=config.accept_only_class_zero)
        except DataError as error:  # keyed by the problem without the split's name: the same masks, say
            problems.setdefault(user_message(error).replace(what, ""), user_message(error))
    if problems:
        raise DataError("\n".join(problems.values()))
    warn_if_one_class(counted["the training split"], run.train_set.info, "the training split")
    return counted["the training split"]


def run_iterations(run: Run, log: RunLog, save_on_interrupt: bool = True) -> dict[str, Any]:
    """Train from ``run.iteration`` to the configured number of iterations, validating and saving on
    schedule; returns the last validation scores."""
    config, scores = run.config, {}
    first = run.iteration * config.grad_accum
    run.train_model.train()
    defer = save_on_interrupt and run.runtime.world_size == 1 and not under_torchrun()
    with deferred_interrupt(STOPPING, defer) as interrupted:
        for count, (epoch, images, labels) in enumerate(micro_batches(run.train_set, run.sampler, config,
                                                                      run.runtime, first), start=first + 1):
            check_batch_memory(run, images)
            loss = forward_backward(run, images, labels)
            log.images(images.shape[0] * run.runtime.world_size)
            if count % config.grad_accum:
                continue
            optimizer_step(run)
            log.step(epoch, loss)
            if _due(run, config.val_interval):
                scores = validate(run)
                log.validation(epoch, scores)
                save_best(run, scores["mean_iu"])
            if _due(run, config.checkpoint_interval):
                save_last(run)
            killed_for_a_test(run.runtime.rank, run.iteration)
            if run.iteration >= config.iterations:
                return scores
            if interrupted.is_set():
                interrupted.wait_said()  # its note first, then what was saved
                stop_saved(run)
    raise AssertionError("micro_batches is endless")


# Ctrl+C during training (one process, not under torchrun: there every process would have to stop at one step).
STOPPING = ("Ctrl+C: stopping when this iteration ends, to save last.pth (the run goes on from it with --resume); "
            "Ctrl+C again stops at once, losing the iterations since the last checkpoint")


def stop_saved(run: Run) -> NoReturn:
    """Save ``last.pth`` (unless this iteration's checkpoint is written already) and stop as Ctrl+C does."""
    if not _due(run, run.config.checkpoint_interval):
        save_last(run)
    log.warning(f"stopped after iteration {run.iteration} of {run.config.iterations}, saved in {run.last_path}: "
                f"continue the run with fcnseg train --out {run.out} --resume")
    raise KeyboardInterrupt


def _due(run: Run, interval: int) -> bool:
    return run.iteration % interval == 0 or run.iteration == run.config.iterations


def check_batch_memory(run: Run, images: torch.Tensor) -> None:
    """Refuse a batch larger than any before it (whole images vary in size) whose training step would not fit
    the memory budget, before the net runs on it; crops were checked before the loader started."""
    batch, height, width = images.shape[0], images.shape[-2], images.shape[-1]
    if batch * height * width <= run.checked_pixels:
        return
    check_step_memory(run.config, run.model.spec, run.runtime, batch, height, width)
    run.checked_pixels = batch * height * width


def forward_backward(run: Run, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Loss and gradients of one micro-batch (scaled for accumulation); a non-finite loss stops the run
    before any weight changes."""
    config, device = run.config, run.runtime.device
    images = images.to(device, non_blocking=True)
    labels = labels.to(device, non_blocking=True)
    if config.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    dtype = AUTOCAST_DTYPES.get(run.amp)
    with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        logits = run.train_model(images)
    reduction = "sum" if config.recipe == "paper" else "mean"
    loss = segmentation_loss(logits, labels, run.info.ignore_index, reduction, run.class_weights,
                             run.info.head_classes)
    if not torch.isfinite(loss):
        last = run.last_path if run.last_path.exists() else "(none yet)"
        weighted_out = unweighted_classes(run, labels)
        fix = (f"Every labelled pixel of this batch is of a class that class_weights weighs 0 ({weighted_out}), "
               "and a mean over no pixels is 0 / 0: give these classes a weight above 0" if weighted_out else
               f"Try a lower learning rate (now {run.optimizer.param_groups[0]['lr']:.3g}), --amp none, or check "
               "the labels (values outside the classes?).")
        raise TrainingError(f"the loss became {loss.item()} at iteration {run.iteration + 1}; stopped before "
                            f"updating the weights. The last good checkpoint is {last}. {fix}")
    run.scaler.scale(loss / config.grad_accum).backward()
    return loss.item()


def unweighted_classes(run: Run, labels: torch.Tensor) -> str | None:
    """The names of the classes in ``labels`` (the first head's) when class weights leave every labelled pixel
    of them out of the loss (weight 0), which makes a mean loss 0 / 0; otherwise None."""
    if run.class_weights is None or run.config.recipe == "paper":  # a summed loss is 0 there, not NaN
        return None
    first = labels if labels.dim() == 3 else labels[:, 0]
    present = [int(v) for v in first.unique() if v != run.info.ignore_index and 0 <= v < len(run.class_weights)]
    if not present or run.class_weights[present].sum() > 0:
        return None
    return ", ".join(run.info.class_names[v] for v in present)


def optimizer_step(run: Run) -> None:
    """Apply the accumulated gradients and advance the schedule by one iteration."""
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    run.scheduler.step()
    if run.ema is not None:
        update_ema(run.ema, run.model, run.config.ema_decay, updates=run.iteration)
    run.iteration += 1


def validate(run: Run) -> dict[str, Any]:
    """Whole-image validation over the validation split (sharded across ranks without repeats), in sliding
    windows where a batch would not fit the memory left (:func:`fcnseg.train.budget.validation_planner`)."""
    dataset = run.val_set
    if run.plan_validation is None:  # made once: its note is said once a run
        run.plan_validation = validation_planner(run.config, run.model.spec, run.runtime)
    if run.config.val_limit:
        dataset = Subset(dataset, range(min(run.config.val_limit, len(dataset))))
    # Its own random numbers: the loader's seed drawn from torch's generator shifted the dropout of every later step,
    # so how often validation ran (val_interval, a resume's option) changed the weights.
    devices = [run.runtime.device] if run.runtime.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        scores = evaluate(run.saved_model, dataset, run.info.num_classes, run.info.ignore_index,
                          device=run.runtime.device, progress=False, distributed=run.runtime.distributed,
                          planner=run.plan_validation,
                          strict_labels=not run.config.accept_only_class_zero,
                          exclude_absent=run.info.exclude_absent, extra_heads=run.info.extra_heads)
    run.train_model.train()
    return scores
