"""Saving and restoring a run: ``last.pth`` (everything to resume exactly) and ``best.pth`` (the best model).

Checkpoints are written atomically. ``last.pth`` holds the model, optimizer, scheduler, grad scaler, every
process's RNG states, the iteration and the best score so far; the position in the data follows from
the iteration (see :mod:`fcnseg.train.data`). With ``ema_decay`` the model of both files is the moving
average (the net to use), and ``last.pth`` also holds the training weights (``train_state_dict``).
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from fcnseg.checkpoint import model_checkpoint, write_checkpoint
from fcnseg.errors import WriteError
from fcnseg.runtime import cpu_model, gather_objects, launcher_id
from fcnseg.train.folder import left_after_a_failed_write
from fcnseg.train.run import Run
from fcnseg.yamlio import dump_yaml

log = logging.getLogger(__name__)


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


def write_config(run: Run) -> None:
    """The resolved options, next to the run's outputs (main process)."""
    if run.runtime.is_main:  # claimed before it lands: a run killed right after still owns it (Outputs.write)
        text = dump_yaml(run.config.run_options())  # read back by --config as the same values
        run.outputs.write(run.out / "config.yaml", text.encode())
        run.outputs.flush()


def restore(run: Run, state: dict[str, Any]) -> None:
    """Load a ``last.pth`` into the run: weights (and their average), optimizer, schedule, scaler, RNGs,
    iteration, best score."""
    if run.ema is not None:
        run.ema.load_state_dict(state["model_state_dict"])
    run.model.load_state_dict(state.get("train_state_dict", state["model_state_dict"]))
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.scaler.load_state_dict(state["scaler"])
    run.iteration, run.best_mean_iu = state["iteration"], state["best_mean_iu"]
    if run.runtime.is_main:
        _warn_if_computed_otherwise(run, state)
    rngs = state["rng"]
    restore_rng_state(rngs[run.runtime.rank] if run.runtime.rank < len(rngs) else rngs[0])


def _warn_if_computed_otherwise(run: Run, state: dict[str, Any]) -> None:
    """A warning where the resumed run computes otherwise than it did (another precision, thread count or CPU):
    it goes on, but will not end with the weights an uninterrupted run would have."""
    was = {"precision": _precision(state.get("amp", run.amp)),  # files before amp auto: as configured
           "threads": state.get("threads"), "CPU": state.get("cpu")}  # files before these: not known, not said
    now = {"precision": _precision(run.amp), "threads": torch.get_num_threads(), "CPU": cpu_model(cores=False)}
    changed = [f"{what} {was[what]} -> {now[what]}" for what in was if was[what] is not None and was[what] != now[what]]
    if changed:
        log.warning(f"the run computed up to iteration {run.iteration} otherwise than it goes on here "
                    f"({', '.join(changed)}; amp {run.config.amp}): it will not end with the weights an uninterrupted "
                    "run would have (parallel sums and other precisions round differently)")


def _precision(amp: str) -> str:
    return "float32" if amp == "none" else amp


def save_last(run: Run) -> None:
    """Write ``last.pth``; every process contributes its RNG states (and under torchrun the agent that started
    it, which tells a restart of this run from another run: :mod:`fcnseg.train.elastic`), the main process
    writes."""
    gathered = gather_objects((rng_state(), launcher_id()), run.runtime)
    if run.runtime.is_main:
        state = {"optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
                 "scaler": run.scaler.state_dict(), "iteration": run.iteration, "best_mean_iu": run.best_mean_iu,
                 "rng": [rng for rng, _ in gathered], "config": run.config.run_options(), "amp": run.amp,
                 "threads": torch.get_num_threads(), "cpu": cpu_model(cores=False),
                 "launchers": sorted({agent for _, agent in gathered if agent is not None})}
        if run.ema is not None:
            state["train_state_dict"] = run.model.state_dict()
        with _checkpoint_write(run), run.outputs.landing([run.last_path], flush=True):
            write_checkpoint(model_checkpoint(run.saved_model, run.info, **state), run.last_path)


@contextlib.contextmanager
def _checkpoint_write(run: Run) -> Iterator[None]:
    """A checkpoint that cannot be written (a full disk, a quota) stops the run in one line that says what is
    left: the atomic writer leaves the previous file as it was, so the run can go on from it."""
    try:
        yield
    except WriteError as error:
        raise WriteError(f"{error}; {left_after_a_failed_write(run.out)}") from None


def save_best(run: Run, mean_iu: float) -> None:
    """Write ``best.pth`` (main process) when ``mean_iu`` beats the best so far."""
    if mean_iu <= run.best_mean_iu:
        return
    run.best_mean_iu = mean_iu
    if run.runtime.is_main:
        with _checkpoint_write(run), run.outputs.landing([run.best_path], flush=True):
            write_checkpoint(model_checkpoint(run.saved_model, run.info, iteration=run.iteration, mean_iu=mean_iu,
                                              config=run.config.run_options()), run.best_path)
