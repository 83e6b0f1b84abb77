"""Elastic restarts under torchrun: when one process of a run dies (killed, out of memory, its machine lost),
torchrun ``--max-restarts N`` starts the whole group again with the same command line, and the run goes on
from its last checkpoint by itself.

The same command line would start a new run, which a folder holding a run refuses without ``--resume``. A
restart is told apart from a user's new run by torchrun's restart count (``TORCHELASTIC_RESTART_COUNT``,
0 on the first start) and by ``last.pth`` itself: it names (hashed) the torchrun agents whose processes wrote
it (:func:`fcnseg.runtime.launcher_id`, kept the same by an agent across its restarts). A restarted process
whose agent is among them continues the run; anything else is checked as a new run, as on the first start:

* a restart before the first checkpoint starts afresh (the folder holds only files this run wrote);
* a plain re-run over a folder holding another run is refused, on torchrun's first start and on each of its
  restarts (the refusal is a failure, which torchrun answers with a restart);
* with ``--resume`` given, every start resumes, as it would without torchrun.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
from pathlib import Path

import torch

from fcnseg.runtime import Runtime, broadcast_object, gather_objects, launcher_id, restart_count
from fcnseg.train.config import TrainConfig

log = logging.getLogger(__name__)
KILL_FOR_TESTS = "FCNSEG_TEST_SIGKILL"


def checkpoint_launchers(path: Path) -> set[str]:
    """The torchrun agents named in the checkpoint at ``path`` (none if it is absent or unreadable: such a
    folder is then checked as for a new run). Memory-mapped: the weights are not read."""
    if not path.is_file():
        return set()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # any unreadable file: open_run or check_new_run reports it as it would without torchrun
        return set()
    launchers = state.get("launchers") if isinstance(state, dict) else None
    return {str(name) for name in launchers} if isinstance(launchers, list) else set()


def after_restart(config: TrainConfig, runtime: Runtime) -> TrainConfig:
    """``config``, set to resume when torchrun has restarted the processes of the run in ``config.out`` after
    its first checkpoint; otherwise unchanged. Every rank takes rank 0's decision."""
    if config.resume:
        return config
    # Every rank asks (the machines' torchruns may count restarts differently: one that joins later counts 0).
    started = gather_objects((restart_count(), launcher_id()), runtime)
    if not any(count for count, _ in started):
        return config
    agents = {agent for _, agent in started} - {None}
    last = Path(config.out) / "last.pth"
    ours = broadcast_object(runtime.is_main and bool(agents & checkpoint_launchers(last)), runtime)
    if not ours:
        return config
    log.info(f"torchrun restarted the run (restart {max(count for count, _ in started)}): continuing {config.out} "
             f"from {last}")
    return dataclasses.replace(config, resume=True)


def killed_for_a_test(rank: int, iteration: int) -> None:
    """Tests only (tests/test_distributed.py): with ``FCNSEG_TEST_SIGKILL=RANK:ITERATION`` in the environment,
    the process of that rank kills itself with SIGKILL (as the kernel's out-of-memory killer does) after that
    iteration, on torchrun's first start only. Inert when the variable is not set."""
    if os.environ.get(KILL_FOR_TESTS) == f"{rank}:{iteration}" and restart_count() == 0:
        os.kill(os.getpid(), signal.SIGKILL)
