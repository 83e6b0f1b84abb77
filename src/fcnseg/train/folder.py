"""The run folder: one run at a time, a new run never over another or over a user's files, a resumed run
exactly the run that was started.

* :func:`hold` locks the folder for the main process (another ``fcnseg train --out`` there is refused,
  naming the holder) and removes temporary files a killed run left behind.
* :func:`check_new_run`, before the folder is held, refuses for a new run a folder holding a run
  (``--resume`` or ``--overwrite``) or files fcnseg train did not write.
* :func:`open_run`, before any data or model is built, clears what a new run replaces; with ``--resume``
  it reads ``last.pth`` and refuses options that would make the resumed run differ from the run that was
  started (the net, the data, the recipe, or the length of a poly schedule), with the command that does
  what was meant.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from fcnseg.checkpoint import read_checkpoint
from fcnseg.errors import ConfigError, TrainingError
from fcnseg.outputs import Outputs, folder_lock
from fcnseg.runtime import Runtime
from fcnseg.train.config import TrainConfig

log = logging.getLogger(__name__)
RUN_FILES = ("config.yaml", "metrics.csv", "last.pth", "best.pth")
NET_KEYS = ("model", "backbone", "width", "geometry", "learnable_upsampling")
# Options a resumed run may change: they do not change what is computed.
FREE_KEYS = {"iterations", "val_interval", "checkpoint_interval", "log_interval", "val_limit", "workers", "device",
             "threads", "max_memory", "out", "resume", "root", "init_from", "imagenet_weights", "overwrite"}


@contextlib.contextmanager
def hold(config: TrainConfig, runtime: Runtime) -> Iterator[None]:
    """Lock ``config.out`` for this run (main process only; other ranks follow the main one)."""
    if not runtime.is_main:
        yield
        return
    with folder_lock(config.out, "fcnseg train", stale=RUN_FILES):
        yield


def saved_config(out: str | Path) -> dict[str, Any] | None:
    """The options a run in ``out`` was started with: its config.yaml, else the copy in its last.pth."""
    out = Path(out)
    if (out / "config.yaml").is_file():
        try:
            data = yaml.safe_load((out / "config.yaml").read_text())
        except (OSError, yaml.YAMLError) as error:
            raise ConfigError(f"cannot read {out / 'config.yaml'}: {error}") from None
        return data if isinstance(data, dict) else None
    if (out / "last.pth").is_file():
        return dict(read_checkpoint(out / "last.pth").get("config", {}))
    return None


def check_new_run(config: TrainConfig) -> list[Path]:
    """Refuse a folder holding a run or files fcnseg train did not write; return the files a new run replaces.

    Safe to call before :func:`hold`: it changes nothing, so a refused folder is left exactly as it was.
    """
    out, last = Path(config.out), Path(config.out) / "last.pth"
    if last.is_file() and not config.overwrite:
        raise TrainingError(f"{out} already holds a run ({last}): pass --resume to continue it, --overwrite "
                            "to replace it, or choose another --out")
    files = [out / name for name in RUN_FILES] + sorted((out / "tensorboard").glob("events.out.tfevents.*"))
    Outputs(out, "train", config.overwrite).claim(files)
    return files


def open_run(config: TrainConfig, runtime: Runtime, replaced: Sequence[Path] = ()) -> dict[str, Any] | None:
    """Clear the folder for a new run (returns None) or read the checkpoint to resume (returns it).

    ``replaced``: the files :func:`check_new_run` (called before :func:`hold`) said a new run replaces.
    """
    out, last = Path(config.out), Path(config.out) / "last.pth"
    if not config.resume:
        if runtime.is_main:  # leftovers of an earlier start: fcnseg train's own, or replaced with --overwrite
            for path in replaced:
                path.unlink(missing_ok=True)
        return None
    if not last.is_file():
        raise TrainingError(f"--resume: there is no checkpoint at {last}; start without --resume")
    state = read_checkpoint(last)
    check_resumable(state.get("config", {}), config)
    log.info("resuming %s from %s at iteration %d of %d", out, last, state["iteration"], config.iterations)
    return state


def check_resumable(started: dict[str, Any], config: TrainConfig) -> None:
    """Refuse options that would make the resumed run differ from the one ``started`` with."""
    if started:  # options added to fcnseg after the run started: their defaults keep the old behaviour
        started = {**TrainConfig().to_dict(), **started}
    asked = config.to_dict()
    changed = {k: (started[k], asked[k]) for k in started.keys() & asked.keys() if started[k] != asked[k]}
    out = config.out
    net = {k: v for k, v in changed.items() if k in NET_KEYS}
    if net:
        was = ", ".join(f"{k} {started[k]}" for k in NET_KEYS if k in started)
        key, (old, new) = next(iter(sorted(net.items())))
        raise TrainingError(f"{out} was trained with {was}; --resume keeps its net, but {key} {new} was asked "
                            f"for (was {old}). Choose another --out for a different net (--init-from {out} starts "
                            "it from this run's weights where they fit)")
    recipe = {k: v for k, v in changed.items() if k not in FREE_KEYS}
    if recipe:
        listed = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in sorted(recipe.items()))
        raise TrainingError(f"--resume continues {out} exactly as it was started, and {listed} would change it. "
                            f"To train with other options from its weights, start a new run: fcnseg train --config "
                            f"{out}/config.yaml --init-from {out}/last.pth --out NEW_FOLDER (with your changes)")
    if "iterations" in changed and started.get("schedule", config.schedule) == "poly":
        old, new = changed["iterations"]
        raise TrainingError(
            f"{out} was started as a {old}-iteration poly schedule, whose learning rate falls to 0 at iteration "
            f"{old}; --iterations {new} would change the rate of every remaining step. To train {abs(new - old)} "
            f"more iteration(s) from its latest weights with a fresh schedule: fcnseg train --config "
            f"{out}/config.yaml --init-from {out}/last.pth --out NEW_FOLDER --iterations {abs(new - old)}")


def finished(state: dict[str, Any], config: TrainConfig) -> bool:
    """Whether the resumed run has nothing left to do (and say so)."""
    if state["iteration"] < config.iterations:
        return False
    log.info("%s has finished: %d of %d iterations are done, nothing to train. To train on from its final weights: "
             "fcnseg train --config %s/config.yaml --init-from %s/last.pth --out NEW_FOLDER --iterations N",
             config.out, state["iteration"], config.iterations, config.out, config.out)
    return True


def left_after_a_failed_write(out: str | Path) -> str:
    """What a run that could not write a file (a full disk) leaves, and how to go on: the atomic writer keeps
    the last checkpoint as it was."""
    last = Path(out) / "last.pth"
    if last.is_file():
        return (f"{last} (the last checkpoint) is unchanged: make room, then continue the run with fcnseg train "
                f"--out {out} --resume")
    return "no checkpoint of this run was written yet: make room, then start it again"
