"""Sharded prediction: ``fcnseg predict --shard I/N`` (processes a scheduler starts, a SLURM array) and ``fcnseg
predict`` under torchrun, whose processes write into one output folder together; a re-run after a failure that
finishes only what is missing; and ``fcnseg eval --out`` under torchrun (its report printed once, and claimed
before it lands).

Each case checks the exit code, the lines printed, which inputs each process segmented (its progress lines),
and the outputs' hashes against a run in one process. docs/RELIABILITY.md lists the cases.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fcnseg.checkpoint import save_model
from fcnseg.cli import main
from fcnseg.commands.predict import _shard_of
from fcnseg.data.info import SYNTHETIC_ROADS
from fcnseg.errors import ConfigError
from fcnseg.outputs import LOCK, RECORD, SHARDS_LOCK, Outputs, Shard
from fcnseg.runtime import Runtime

from .helpers import digests, error_names, mentions, one_line_error, random_fcn, refused, write_png

OUTPUTS = ("_mask.png", "_overlay.png", "_side_by_side.png", "_legend.png")
COUNT = 12
NAMES = [f"{index:02d}.png" for index in range(COUNT)]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for index, name in enumerate(NAMES):
        write_png(folder / name, seed=index, size=(32, 48))
    return folder


@pytest.fixture(scope="module")
def reference(tiny_checkpoint, photos, tmp_path_factory) -> dict[str, str]:
    """The outputs of a run in one process (name: sha256)."""
    out = tmp_path_factory.mktemp("one") / "out"
    assert main(_argv(tiny_checkpoint, photos, out, "--quiet")) == 0
    return _outputs(out)


def _argv(checkpoint: Path, photos: Path, out: Path, *more: object) -> list[str]:
    return ["predict", str(checkpoint), str(photos), "--out", str(out), "--threads", "1", *map(str, more)]


def _outputs(out: Path) -> dict[str, str]:
    return {name: digest for name, digest in digests(out).items() if name.endswith(OUTPUTS)}


def _segmented(err: str) -> list[str]:
    """The inputs a run segmented, from its progress lines (``shard 0/2: [3/6] 04.png 48x32 0.05 s``)."""
    return re.findall(r"\[\d+/\d+\] (\S+) \d+x\d+ ", err)


def _unfinished(out: Path) -> list[str]:
    """The inputs that lack one of their outputs in ``out``."""
    return [name for name in NAMES if not all((out / f"{name[:-4]}{suffix}").exists() for suffix in OUTPUTS)]


def _check_finished(out: Path, users: dict[str, str]) -> None:
    """Every output present and recorded as fcnseg predict's, no journal or temporary left, the user's files as
    they were."""
    expected = {f"{name[:-4]}{suffix}" for name in NAMES for suffix in OUTPUTS}
    assert {p.name for p in out.iterdir()} - expected - set(users) <= {RECORD, LOCK, SHARDS_LOCK}
    recorded = json.loads((out / RECORD).read_text())["files"]
    assert {name for name, entry in recorded.items() if entry["command"] == "predict"} == expected
    assert Outputs(out, "predict").foreign() == [out / name for name in sorted(users)]
    assert {name: digest for name, digest in digests(out).items() if name in users} == users


def _out_with_a_users_file(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("the user's own notes, kept beside the masks\n")
    return out, digests(out)


def _cli(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fcnseg.cli", *argv], env=ENV, stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while not path.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    assert path.exists(), f"{path} never appeared (exit {process.poll()})"


def _stop(process: subprocess.Popen) -> None:
    """SIGSTOP ``process``, and wait until it is stopped."""
    process.send_signal(signal.SIGSTOP)
    while Path(f"/proc/{process.pid}/stat").read_text().rpartition(")")[2].split()[0] != "T":
        time.sleep(0.001)


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _torchrun(*argv: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
            "--master_port", str(_port()), "-m", "fcnseg.cli", *argv]


# --- the split ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("count", [1, 2, 3, 5, 13])
def test_shards_take_every_input_once(count):
    taken = [item for index in range(count) for item in Shard(index, count).take(NAMES)]
    assert sorted(taken) == NAMES  # none twice, none left out (13 shards: one without inputs)


@pytest.mark.parametrize("spec", ["2/2", "0/0", "-1/2", "a/2", "1"])
def test_a_shard_that_does_not_exist_is_a_usage_error(tiny_checkpoint, tmp_path, capsys, spec):
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", str(tiny_checkpoint), str(tmp_path), "--out", str(tmp_path / "out"), f"--shard={spec}"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert mentions(err.splitlines()[-1], "--shard") and mentions(err.splitlines()[-1], spec), err
    assert not (tmp_path / "out").exists()


def test_a_shard_without_inputs_says_so_and_writes_nothing(tiny_checkpoint, photos, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(_argv(tiny_checkpoint, photos, out, "--shard", "13/16")) == 0  # a SLURM array larger than needed
    one_line_error(capsys.readouterr().err, "13/16", "12", "nothing to do")
    assert _outputs(out) == {}


def test_shard_under_torchrun_is_refused_since_the_ranks_share_the_inputs():
    with pytest.raises(ConfigError) as caught:
        _shard_of(Shard(0, 2), Runtime(torch.device("cpu"), 1, rank=1, world_size=2))
    error_names(caught, "--shard 0/2", "torchrun", "2")
    assert _shard_of(None, Runtime(torch.device("cpu"), 1, rank=1, world_size=2)) == Shard(1, 2)
    assert _shard_of(None, Runtime(torch.device("cpu"), 1)) is None


# --- shards writing into one folder ------------------------------------------------------------------------


def test_two_shards_at_once_segment_each_input_once_as_one_process_would(tiny_checkpoint, photos, reference,
                                                                         tmp_path):
    out, users = _out_with_a_users_file(tmp_path)
    runs = [_cli(_argv(tiny_checkpoint, photos, out, "--shard", f"{index}/2")) for index in (0, 1)]
    errs = [run.communicate(timeout=120)[1] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], errs
    assert [_segmented(err) for err in errs] == [NAMES[0::2], NAMES[1::2]]  # disjoint, and every input
    for index, err in enumerate(errs):
        assert f"fcnseg predict: shard {index}/2 wrote results for 6 images to {out}" in err.splitlines(), err
    assert _outputs(out) == reference  # byte for byte
    _check_finished(out, users)


def test_other_runs_are_refused_while_shards_write_and_the_runs_other_shard_joins(tiny_checkpoint, photos,
                                                                                   reference, tmp_path, capsys):
    out, users = _out_with_a_users_file(tmp_path)
    first = _cli(_argv(tiny_checkpoint, photos, out, "--shard", "0/2", "--quiet"))
    try:
        _wait_for(out / "00_mask.png", first)
        _stop(first)  # held still, halfway through its shard, holding its part of the folder
        assert not (out / "10_mask.png").exists(), "it finished before the test"
        during = digests(out)
        refused(capsys, _argv(tiny_checkpoint, photos, out), out, f"pid {first.pid}")  # a run of one process
        refused(capsys, _argv(tiny_checkpoint, photos, out, "--shard", "0/3"), out, "number of shards")
        refused(capsys, _argv(tiny_checkpoint, photos, out, "--shard", "1/2", "--opacity", "0.7"), out, "options")
        refused(capsys, _argv(tiny_checkpoint, photos, out, "--shard", "0/2"), "0/2", "running already")
        refused(capsys, ["eval", tiny_checkpoint, "--dataset", "synthetic", "--limit", "1", "--workers", "0",
                         "--threads", "1", "--out", out], out, f"pid {first.pid}")
        assert digests(out) == during  # the refused commands changed nothing
        assert main(_argv(tiny_checkpoint, photos, out, "--shard", "1/2")) == 0  # the run's other shard joins
        assert _segmented(capsys.readouterr().err) == NAMES[1::2]
    finally:
        first.send_signal(signal.SIGCONT)
    assert first.wait(timeout=120) == 0, first.stderr.read()
    assert _outputs(out) == reference
    _check_finished(out, users)


def test_a_shard_killed_halfway_is_finished_by_a_rerun_without_overwrite(tiny_checkpoint, photos, reference,
                                                                        tmp_path, capsys):
    out, users = _out_with_a_users_file(tmp_path)
    killed = _cli(_argv(tiny_checkpoint, photos, out, "--shard", "1/2", "--quiet"))
    _wait_for(out / "03_mask.png", killed)  # 01.png done, 03.png under way
    killed.kill()  # SIGKILL: nothing of it runs after this
    killed.wait(timeout=60)
    unfinished = _unfinished(out)
    assert "01.png" not in unfinished and "11.png" in unfinished, "it finished before it was killed"
    assert main(_argv(tiny_checkpoint, photos, out, "--shard", "0/2")) == 0
    assert _segmented(capsys.readouterr().err) == NAMES[0::2]
    assert main(_argv(tiny_checkpoint, photos, out, "--shard", "1/2")) == 0  # its re-run: no --overwrite
    err = capsys.readouterr().err
    assert _segmented(err) == [name for name in NAMES[1::2] if name in unfinished]  # only what was missing
    kept = len(NAMES[1::2]) - len(_segmented(err))
    one_line_error("\n".join(line for line in err.splitlines() if "wrote" in line), "1/2", "6", str(kept), "kept")
    assert main(_argv(tiny_checkpoint, photos, out)) == 0  # a run of one process: nothing left to do
    err = capsys.readouterr().err
    assert _segmented(err) == [] and mentions(err, "12 of them")
    assert _outputs(out) == reference
    _check_finished(out, users)


def test_a_shard_refuses_a_users_file_among_its_outputs(tiny_checkpoint, photos, reference, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "03_mask.png").write_bytes(b"the user's own mask of picture 3")  # an output of shard 1/2
    users = digests(out)
    refused(capsys, _argv(tiny_checkpoint, photos, out, "--shard", "1/2"), "03_mask.png", "--overwrite")
    assert digests(out) == users  # refused before anything was made
    assert main(_argv(tiny_checkpoint, photos, out, "--shard", "0/2", "--quiet")) == 0  # not among its outputs
    refused(capsys, _argv(tiny_checkpoint, photos, out), "03_mask.png", "--overwrite")
    assert (out / "03_mask.png").read_bytes() == b"the user's own mask of picture 3"
    assert main(_argv(tiny_checkpoint, photos, out, "--shard", "1/2", "--overwrite", "--quiet")) == 0  # asked
    assert _outputs(out) == reference
    _check_finished(out, {})


@pytest.mark.slow  # two torchrun runs of two processes each: about 30 s on two cores
def test_predict_under_torchrun_killed_halfway_is_finished_by_its_rerun(tiny_checkpoint, photos, reference, tmp_path):
    out, users = _out_with_a_users_file(tmp_path)
    argv = _argv(tiny_checkpoint, photos, out)
    first = subprocess.Popen(_torchrun(*argv), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ranks = _worker_pids(first.pid)
        _wait_for(out / "03_mask.png", first)  # rank 1 is done with 01.png and under way with 03.png
        os.kill(ranks[1], signal.SIGKILL)  # torchrun then stops rank 0 too
        first.communicate(timeout=120)
    finally:
        first.kill()
    assert first.returncode != 0
    unfinished = _unfinished(out)
    assert "01.png" not in unfinished and "11.png" in unfinished, "rank 1 finished before it was killed"
    second = subprocess.run(_torchrun(*argv), env=ENV, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    assert sorted(_segmented(second.stderr)) == unfinished  # only what was missing, each once
    kept = COUNT - len(unfinished)
    summary = [line for line in second.stderr.splitlines() if "wrote" in line]  # printed once, by rank 0
    assert summary == [f"fcnseg predict: 2 processes wrote results for {COUNT} images to {out} ({kept} of them "
                       "written by an earlier run, and kept)"], second.stderr
    assert _outputs(out) == reference
    _check_finished(out, users)


def _worker_pids(parent: int) -> dict[int, int]:
    """The processes torchrun (``parent``) started, by rank (read from their environment)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ranks = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                if int(stat.read_text().rpartition(")")[2].split()[1]) != parent:
                    continue
                environ = (stat.parent / "environ").read_bytes().split(b"\0")
            except (OSError, IndexError, ValueError):
                continue
            rank = next((int(item[5:]) for item in environ if item.startswith(b"RANK=")), None)
            if rank is not None:
                ranks[rank] = int(stat.parent.name)
        if len(ranks) == 2:
            return ranks
        time.sleep(0.01)
    raise AssertionError("torchrun did not start two workers")


# --- a re-run keeps only what the same job wrote -----------------------------------------------------------


def test_a_rerun_redoes_what_changed_since_and_keeps_the_rest(tiny_checkpoint, photos, tmp_path, capsys):
    inputs, out = tmp_path / "photos", tmp_path / "out"
    inputs.mkdir()
    for name in NAMES[:4]:
        (inputs / name).write_bytes((photos / name).read_bytes())
    checkpoint = tmp_path / "net.pth"
    checkpoint.write_bytes(Path(tiny_checkpoint).read_bytes())
    argv = _argv(checkpoint, inputs, out)
    assert main(argv) == 0
    assert _segmented(capsys.readouterr().err) == NAMES[:4]
    write_png(inputs / "01.png", seed=99, size=(32, 48))  # another picture under the same name
    (out / "02_legend.png").unlink()  # an output the user deleted
    assert main(argv) == 0
    assert _segmented(capsys.readouterr().err) == ["01.png", "02.png"]
    save_model(random_fcn(seed=5), SYNTHETIC_ROADS, checkpoint)  # other weights in the same file
    assert main(argv) == 0
    assert _segmented(capsys.readouterr().err) == NAMES[:4]  # every output is made again
    assert main([*argv, "--opacity", "0.8"]) == 0  # another option
    assert _segmented(capsys.readouterr().err) == NAMES[:4]


# --- fcnseg eval --out --------------------------------------------------------------------------------------


def test_an_eval_report_killed_as_it_landed_is_not_refused_by_the_next_eval(tiny_checkpoint, tmp_path, capsys,
                                                                           monkeypatch):
    out = tmp_path / "report"
    argv = ["eval", str(tiny_checkpoint), "--dataset", "synthetic", "--limit", "1", "--workers", "0", "--threads",
            "1", "--out", str(out)]
    real_replace = os.replace

    def replace(source, target, *args, **kwargs):
        real_replace(source, target, *args, **kwargs)
        if Path(target).name == "confusion.png":  # killed the instant the report landed
            raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", replace)
    assert main(argv) == 130
    monkeypatch.undo()
    assert (out / "metrics.json").is_file() and (out / "confusion.png").is_file()
    capsys.readouterr()
    assert main(argv) == 0, capsys.readouterr().err  # its own files: replaced without --overwrite
    assert Outputs(out, "eval").foreign() == []


@pytest.mark.slow  # torchrun and two processes: about 15 s on two cores
def test_eval_under_torchrun_prints_its_report_once(tiny_checkpoint, tmp_path):
    out = tmp_path / "report"
    run = subprocess.run(_torchrun("eval", str(tiny_checkpoint), "--dataset", "synthetic", "--limit", "3",
                                   "--workers", "0", "--threads", "1", "--out", str(out)),
                         env=ENV, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.count("synthetic val: 3 images") == 1, run.stdout
    assert run.stdout.count(f"wrote {out / 'metrics.json'}") == 1, run.stdout
    assert json.loads((out / "metrics.json").read_text())["num_images"] == 3


def test_shards_run_one_after_another_split_one_list_or_are_refused(tiny_checkpoint, photos, reference, tmp_path,
                                                                    capsys):
    """Shards that did not run at the same time split the lists they found: given the inputs in another order, or
    with an image added between two tasks of an array, images were never segmented and every shard exited 0."""
    out = tmp_path / "out"
    files = sorted(photos.glob("*.png"))
    assert main(["predict", str(tiny_checkpoint), *map(str, files), "--out", str(out), "--threads", "1",
                 "--shard", "0/2", "--quiet"]) == 0
    assert main(["predict", str(tiny_checkpoint), *map(str, files[::-1]), "--out", str(out), "--threads", "1",
                 "--shard", "1/2", "--quiet"]) == 0  # the inputs in another order: the same list, split alike
    assert _outputs(out) == reference
    grown = tmp_path / "grown"
    grown.mkdir()
    for file in files[:4]:
        (grown / file.name).write_bytes(file.read_bytes())
    out = tmp_path / "out2"
    assert main(_argv(tiny_checkpoint, grown, out, "--shard", "0/2", "--quiet")) == 0
    write_png(grown / "99.png", seed=99, size=(32, 48))  # an image arrives between the two tasks
    before = digests(out)
    refused(capsys, _argv(tiny_checkpoint, grown, out, "--shard", "1/2", "--quiet"), "unfinished sharded run",
            "shards 0 of 2 done", "--overwrite")
    assert digests(out) == before
