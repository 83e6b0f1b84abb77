"""fcnseg train beyond one process: torchrun's multi-node rendezvous, elastic restarts, a run folder every node
must share, and what the processes print (docs/distributed.md).

Each torchrun here runs a width-1/16 net for 4 iterations on gloo, one thread per process, with a time limit
(torchrun and its workers are killed if it hangs).
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fcnseg.checkpoint import read_checkpoint

from .helpers import digests, refused

TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
TINY = ["-m", "fcnseg.cli", "train", "--width", "0.0625", "--geometry", "fast", "--batch-size", "2", "--workers",
        "0", "--threads", "1", "--iterations", "4", "--val-interval", "4", "--checkpoint-interval", "2",
        "--log-interval", "1", "--set", "dataset_options={num_images: 8, height: 40, width: 48}"]
LIMIT_S = 180  # far above the ~20 s each takes: only a hang reaches it
SUMMARY = "checkpoints: "


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _single_node(port: int, *extra: str) -> list[str]:
    return [*TORCHRUN, "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(port), *extra]


def _start(command: list[str], cwd: Path | None = None, **env: str) -> subprocess.Popen:
    return subprocess.Popen(command, cwd=cwd, env={**os.environ, "OMP_NUM_THREADS": "1", **env}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (torchrun starts each worker in a session of its own)."""
    try:
        children = [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
    return children + [grandchild for child in children for grandchild in _descendants(child)]


def _finish(process: subprocess.Popen) -> tuple[int, str]:
    """Exit code and output (stdout and stderr together) of a started torchrun, killed with all its workers if
    it outlives the time limit."""
    try:
        output, _ = process.communicate(timeout=LIMIT_S)
    except subprocess.TimeoutExpired:
        for pid in [*_descendants(process.pid), process.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"torchrun still running after {LIMIT_S} s:\n{output}")
    return process.returncode, output


def _run(command: list[str], cwd: Path | None = None, **env: str) -> tuple[int, str]:
    return _finish(_start(command, cwd, **env))


def _same_weights(one: Path, two: Path) -> None:
    first, second = (read_checkpoint(path / "last.pth") for path in (one, two))
    assert first["iteration"] == second["iteration"] == 4
    for key, value in first["model_state_dict"].items():
        assert torch.equal(value, second["model_state_dict"][key]), key  # bit for bit


def _errors(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("fcnseg train: error: ")]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, str]:
    """One uninterrupted run of two processes on one node: its folder and output."""
    out = tmp_path_factory.mktemp("reference") / "run"
    code, output = _run([*_single_node(_port()), *TINY, "--out", str(out)])
    assert code == 0, output
    return out, output


@pytest.mark.slow
def test_two_processes_print_the_summary_once(reference):
    out, output = reference
    assert output.count(SUMMARY) == 1 and output.count("| net |") == 1, output
    assert "Traceback" not in output and not _errors(output), output


@pytest.mark.slow
def test_two_nodes_on_a_c10d_rendezvous_train_the_weights_of_one_node(reference, tmp_path):
    port, out = _port(), tmp_path / "run"
    nodes = [_start([*TORCHRUN, "--nnodes", "2", "--node_rank", str(rank), "--nproc_per_node", "1",
                     "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "two-nodes",
                     *TINY, "--out", str(out)]) for rank in (0, 1)]
    results = [_finish(node) for node in nodes]
    assert [code for code, _ in results] == [0, 0], results
    _same_weights(reference[0], out)
    assert sum(output.count(SUMMARY) for _, output in results) == 1, results  # rank 0's node alone prints it


@pytest.mark.slow
def test_a_worker_killed_after_a_checkpoint_is_restarted_and_ends_with_the_same_weights(reference, tmp_path):
    # Rank 1 kills itself with SIGKILL after iteration 3 (last.pth holds iteration 2): torchrun restarts both.
    out = tmp_path / "run"
    code, output = _run([*_single_node(_port(), "--max-restarts", "1"), *TINY, "--out", str(out)],
                        FCNSEG_TEST_SIGKILL="1:3")
    # Known, not yet understood (docs/distributed.md): once in four runs under load, a worker of the restarted
    # group aborted while tearing down gloo ("terminate called without an active exception", exit -6) after the
    # run had finished and written its checkpoints, and torchrun reported the run failed. Tolerated here only
    # in that exact form; everything the run wrote is still checked below.
    teardown_abort = "terminate called without an active exception" in output and "exitcode: -6" in output
    assert code == 0 or teardown_abort, output
    assert "exitcode: -9" in output and output.count("torchrun restarted the run (restart 1)") == 1, output
    assert output.count("resuming") == 1 and output.count(SUMMARY) == 1, output  # notes and summary: once
    assert teardown_abort or "Traceback" not in output, output  # rank 0, cut off by the kill, says so in one line
    _same_weights(reference[0], out)
    iterations = [row.split(",")[0] for row in (out / "metrics.csv").read_text().splitlines()[1:]]
    assert iterations == ["1", "2", "3", "4", "4"]  # each once, as if never interrupted (and the validation)


@pytest.mark.slow
def test_a_worker_killed_before_the_first_checkpoint_starts_the_run_afresh(reference, tmp_path):
    # Rank 0 (the one that writes and holds the folder) dies after iteration 1: nothing to resume from.
    out = tmp_path / "run"
    code, output = _run([*_single_node(_port(), "--max-restarts", "1"), *TINY, "--out", str(out)],
                        FCNSEG_TEST_SIGKILL="0:1")
    assert code == 0, output
    assert "exitcode: -9" in output and "resuming" not in output and "Traceback" not in output, output
    _same_weights(reference[0], out)


@pytest.mark.slow
def test_a_plain_rerun_is_refused_on_every_start_of_torchrun(reference, tmp_path):
    # A folder holding a finished run, and the same command without --resume: refused, and torchrun's restart
    # (after the refusal) is refused too rather than taken for a restart of that run.
    out = tmp_path / "run"
    shutil.copytree(reference[0], out)  # modification times kept: the outputs record still knows the files
    before = digests(out)
    code, output = _run([*_single_node(_port(), "--max-restarts", "1"), *TINY, "--out", str(out)])
    assert code != 0
    lines = _errors(output)
    assert len(lines) == 4 and all("already holds a run" in line and "--resume" in line for line in lines), output
    assert "resuming" not in output and "torchrun restarted" not in output, output
    assert digests(out) == before


@pytest.mark.slow
def test_a_run_folder_that_a_node_does_not_see_is_refused(tmp_path):
    # Two "machines" whose --out run names two folders (each node in its own working folder): as if the run
    # folder were on each machine's own disk.
    port, host = _port(), socket.gethostname()
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    nodes = [_start([*TORCHRUN, "--nnodes", "2", "--node_rank", str(rank), "--nproc_per_node", "1",
                     "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "not-shared",
                     *TINY, "--out", "run"], cwd=tmp_path / name) for rank, name in enumerate("ab")]
    results = [_finish(node) for node in nodes]
    assert all(code != 0 for code, _ in results), results
    for _, output in results:  # each node's process: one line naming its rank and host, and both folders
        line, = _errors(output)
        assert f"on {host}] the run folder is not shared" in line, line
        assert str(tmp_path / "a" / "run") in line and str(tmp_path / "b" / "run") in line, line
        assert 'File "' + str(Path(__file__).parents[1] / "src") not in output, output  # no fcnseg traceback
    assert not list(tmp_path.rglob("last.pth")) and not list(tmp_path.rglob("config.yaml"))


def test_an_error_in_one_process_of_several_names_its_rank_and_host(capsys, monkeypatch):
    # As torchrun starts rank 1 of 2; refused before the process group is joined.
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    line = refused(capsys, ["train", "--set", "modle=fcn8s"], "modle")
    assert line.startswith(f"fcnseg train: error: [rank 1 on {socket.gethostname()}] "), line


def test_losing_the_other_processes_is_one_line_not_a_traceback(capsys, monkeypatch):
    import fcnseg.commands.train as command
    from fcnseg.cli import main

    def peer_gone(args):
        raise RuntimeError("[/__w/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error "
                           "[127.0.0.1]:19841: Connection reset by peer. This is typically caused by a remote "
                           "worker hanging or bugs in the application. GLHF!")

    monkeypatch.setattr(command, "run", peer_gone)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)  # outside torchrun: returns (under it, see below)
    assert main(["train"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"fcnseg train: error: [rank 0 on {socket.gethostname()}] lost contact with the other "
                          "processes"), err
    assert "Connection reset by peer" in err and "GLHF" not in err, err
    # In a single process the same error is a bug, and keeps its traceback.
    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(RuntimeError, match="Connection reset"):
        main(["train"])


LOSES_CONTACT = """
import sys
import fcnseg.cli as cli
import fcnseg.commands.train as command

def peer_gone(args):
    raise RuntimeError("[pair.cc:537] Read error [127.0.0.1]:19841: Connection reset by peer. GLHF!")

command.run = peer_gone
cli.LOST_CONTACT_WAIT_S = float(sys.argv[1])
sys.exit(cli.main(["train"]))
"""


def _losing_contact_under_torchrun(wait_s: float) -> subprocess.Popen:
    """Rank 0 of 2 as torchrun starts it, whose training loses contact with the other process at once."""
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "0", "TORCHELASTIC_RUN_ID": "test", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", LOSES_CONTACT, str(wait_s)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_a_process_that_lost_contact_under_torchrun_waits_for_torchrun_to_stop_it():
    # torchrun names the failure it saw first; a process that left at once after losing contact was seen in the
    # same look as the killed process and named in its place (rank 0's exit, not the killed rank's -9).
    process = _losing_contact_under_torchrun(wait_s=LIMIT_S)
    try:
        assert select.select([process.stderr], [], [], LIMIT_S)[0], "nothing said"  # no test hangs on a read
        line = process.stderr.readline()  # said before the wait, in one write
        assert "lost contact with the other processes" in line, line
        time.sleep(1.0)
        assert process.poll() is None  # still there: waiting for torchrun's look
        process.send_signal(signal.SIGTERM)  # what torchrun does once it has seen the failed process
        assert process.wait(timeout=10) == -signal.SIGTERM
    finally:
        process.kill()
        process.communicate()


def test_a_process_that_lost_contact_under_torchrun_and_was_not_stopped_leaves_with_code_1():
    # The process that stopped ran on another machine: this machine's torchrun sees nothing, the wait ends.
    process = _losing_contact_under_torchrun(wait_s=0.2)
    out, err = process.communicate(timeout=LIMIT_S)
    assert process.returncode == 1, err
    assert err.count("\n") == 1 and "lost contact with the other processes" in err and "Traceback" not in err, err


def test_a_restart_continues_only_a_run_that_its_own_torchrun_wrote(tmp_path, monkeypatch, capsys):
    # One process as torchrun starts it (no process group): the restart logic without the launch.
    import fcnseg.train.elastic as elastic
    from fcnseg.cli import main

    out = tmp_path / "run"
    argv = ["train", "--width", "0.0625", "--geometry", "fast", "--batch-size", "4", "--workers", "0", "--threads",
            "1", "--iterations", "2", "--set", "dataset_options={num_images: 4, height: 40, width: 48}",
            "--out", str(out)]
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    assert main(argv) == 0
    assert len(read_checkpoint(out / "last.pth")["launchers"]) == 1
    before = digests(out)
    # torchrun's restart, by the agent that wrote last.pth: continued (here: nothing left to train).
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    capsys.readouterr()
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "torchrun restarted the run (restart 1)" in err and "has finished" in err, err
    # Another launch's restart (its first start was refused): a new run over a folder holding one, refused.
    monkeypatch.setattr(elastic, "launcher_id", lambda: "another torchrun")
    refused(capsys, argv, str(out), "already holds a run", "--resume")
    # The user's own re-run, without torchrun: refused as always.
    monkeypatch.delenv("TORCHELASTIC_RUN_ID")
    monkeypatch.delenv("TORCHELASTIC_RESTART_COUNT")
    refused(capsys, argv, str(out), "already holds a run")
    assert digests(out) == before
