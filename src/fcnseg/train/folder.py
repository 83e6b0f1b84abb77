"""The run folder: one run at a time, a new run never over another or over a user's files, a resumed run
exactly the run that was started.

* :func:`hold` locks the folder for the main process (another ``fcnseg train --out`` there is refused,
  naming the holder) and removes temporary files a killed run left behind. Under torchrun rank 0 alone takes
  the lock and writes the run's files; :func:`check_shared` then refuses a folder that some rank does not see
  (a machine without the shared filesystem), since every rank reads ``last.pth`` to resume.
* :func:`check_new_run`, before the folder is held, refuses for a new run a folder holding a run
  (``--resume`` or ``--overwrite``) or files fcnseg train did not write.
* :func:`open_run`, before any data or model is built, reads ``last.pth`` for ``--resume`` and refuses
  options that would make the resumed run differ from the run that was started (the net, the data, the
  recipe, or the length of a poly schedule), with the command that does what was meant.
* :func:`clear_replaced`, once a new run has passed every check, removes the files it replaces.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from fcnseg.atomic import atomic_open
from fcnseg.checkpoint import read_checkpoint
from fcnseg.errors import TrainingError
from fcnseg.outputs import Outputs, folder_lock
from fcnseg.runtime import Runtime, broadcast_object, gather_objects, process_label
from fcnseg.train.config import TrainConfig
from fcnseg.yamlio import read_yaml_file

log = logging.getLogger(__name__)
RUN_FILES = ("config.yaml", "metrics.csv", "last.pth", "best.pth")
SHARED_CHECK = ".fcnseg-shared-check"  # rank 0 writes it, every rank reads it back, rank 0 removes it
NET_KEYS = ("model", "backbone", "width", "geometry", "learnable_upsampling")
RESUME_KEYS = ("iteration", "optimizer", "scheduler", "scaler", "rng", "best_mean_iu")  # what restore() reads
# Options a resumed run may change: they do not change what is computed.
FREE_KEYS = {"iterations", "val_interval", "checkpoint_interval", "log_interval", "val_limit", "workers",
             "keep_decoded", "device", "threads", "max_memory", "out", "resume", "root", "init_from",
             "imagenet_weights", "overwrite"}


@contextlib.contextmanager
def hold(config: TrainConfig, runtime: Runtime) -> Iterator[None]:
    """Lock ``config.out`` for this run (main process only; other ranks follow the main one)."""
    if not runtime.is_main:
        yield
        return
    # The host too: on a shared filesystem the holder may run on another machine.
    with folder_lock(config.out, f"fcnseg train on {socket.gethostname()}",
                     stale=(*RUN_FILES, SHARED_CHECK)):
        yield


def check_shared(config: TrainConfig, runtime: Runtime) -> None:
    """Under torchrun: refuse, on every rank, a run folder that some rank does not see as rank 0 writes it.

    Rank 0 (holding the folder) writes a token of its own (its host, pid and a random number) there; every
    rank reads it back from its own ``--out`` (the same path, or another mount of the same folder) and says
    what it saw; rank 0 removes the file. Every rank raises the same error, so none waits for another.
    """
    if not runtime.distributed:
        return
    path = Path(config.out) / SHARED_CHECK
    token = f"{process_label()} pid {os.getpid()} {secrets.token_hex(8)}\n" if runtime.is_main else None
    if runtime.is_main:
        with atomic_open(path, "w") as handle:  # closed and synced: visible to NFS clients that open it next
            handle.write(token)
    token = broadcast_object(token, runtime)  # also waits for rank 0 to have written it
    try:
        seen = path.read_text() == token
    except OSError:
        seen = False
    views = gather_objects((process_label(), str(Path(config.out).resolve()), seen), runtime)
    if runtime.is_main:
        path.unlink(missing_ok=True)
    blind = [(label, folder) for label, folder, saw in views if not saw]
    if blind:
        main, folder = views[0][:2]
        others = f" (and {len(blind) - 1} more process(es))" if len(blind) > 1 else ""
        raise TrainingError(f"the run folder is not shared: {main} writes the run into {folder}, but {blind[0][0]} "
                            f"does not see it in {blind[0][1]}{others}. Rank 0 writes the checkpoints and every "
                            "rank reads last.pth to resume: give --out a folder that every machine sees, on a "
                            "shared filesystem (NFS, Lustre, ...)")


def saved_config(out: str | Path) -> dict[str, Any] | None:
    """The options a run in ``out`` was started with: its config.yaml, else (missing, or emptied or overwritten
    with something that is no mapping of options) the copy in its last.pth."""
    out = Path(out)
    if (out / "config.yaml").is_file():
        data = read_yaml_file(out / "config.yaml", "the run's config")
        if isinstance(data, dict):
            return data
        log.warning(f"{out / 'config.yaml'} holds no options (it was emptied or overwritten): the run's options "
                    "come from the copy in its last.pth")
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


def open_run(config: TrainConfig) -> dict[str, Any] | None:
    """Read the checkpoint to resume (returns it); None for a new run."""
    out, last = Path(config.out), Path(config.out) / "last.pth"
    if not config.resume:
        return None
    if not last.is_file():
        raise TrainingError(f"--resume: there is no checkpoint at {last}; start without --resume")
    state = read_checkpoint(last)
    missing = [key for key in RESUME_KEYS if key not in state]
    if missing:  # a best.pth, a converted or packed net copied there: restoring it was a KeyError
        raise TrainingError(f"--resume: {last} is not a checkpoint fcnseg train saves to go on from (it has no "
                            f"{', '.join(missing)}): to train from its weights, start a new run with --init-from "
                            f"{last} --out NEW_FOLDER")
    check_resumable(state.get("config", {}), config)
    log.info("resuming %s from %s at iteration %d of %d", out, last, state["iteration"], config.iterations)
    return state


def clear_replaced(runtime: Runtime, replaced: Sequence[Path]) -> None:
    """Remove what a new run replaces (``replaced``: what :func:`check_new_run` found, fcnseg train's own files
    or, with --overwrite, any), once the run has passed its checks and just before its first step: a refused run
    (class weights, memory, data, Ctrl+C) leaves them as they were, and a run killed before its first checkpoint
    leaves no older last.pth for --resume to take for its own."""
    if runtime.is_main:
        for path in replaced:
            path.unlink(missing_ok=True)


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
    if "iterations" in changed and config.resolved_schedule() == "poly":
        old, new = changed["iterations"]
        start = (f"{out} was started as a {old}-iteration poly schedule, whose learning rate falls to 0 at iteration "
                 f"{old}; --iterations {new} would change the rate of every remaining step.")
        if new < old:  # it said "to train 370 more iteration(s)" for --iterations 30 of 400
            raise TrainingError(f"{start} Its weights so far are in {out}/last.pth (use them as they are), or resume "
                                f"without --iterations to finish the {old}")
        raise TrainingError(
            f"{start} To train {new - old} more iteration(s) from its latest weights with a fresh schedule: fcnseg "
            f"train --config {out}/config.yaml --init-from {out}/last.pth --out NEW_FOLDER --iterations {new - old}")


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
