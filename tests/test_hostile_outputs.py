"""Hostile use of the output folders of ``fcnseg predict`` and ``fcnseg eval --out``: runs stopped halfway (Ctrl+C,
SIGTERM, kill -9, a full disk) are continued by the next run without ``--overwrite``, two runs into one folder
at once, links of the user's in the output folder, and inputs that are symbolic links leading nowhere.

Each case checks the exit code, the line printed, no traceback, and the hashes of the user's files before and
after. docs/RELIABILITY.md lists the cases.
"""

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fcnseg.cli import main
from fcnseg.outputs import LOCK, RECORD, Outputs

from .helpers import digests, mentions, one_line_error, refused, write_png

OUTPUTS = ("_mask.png", "_overlay.png", "_side_by_side.png", "_legend.png")


def _photos(folder: Path, count: int) -> list[str]:
    """``count`` small pictures in ``folder``; returns their stems."""
    stems = [f"{index:02d}" for index in range(count)]
    for index, stem in enumerate(stems):
        write_png(folder / f"{stem}.png", seed=index, size=(32, 48))
    return stems


def _out_with_a_users_file(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("the user's own notes, kept beside the masks\n")
    return out, digests(out)


def _check_finished(out: Path, stems: list[str], users: dict[str, str]) -> None:
    """Every output present once, recorded as fcnseg predict's; the user's file as it was; nothing else left."""
    expected = {f"{stem}{suffix}" for stem in stems for suffix in OUTPUTS}
    assert {p.name for p in out.iterdir()} == expected | {"notes.txt", RECORD, LOCK}
    recorded = json.loads((out / RECORD).read_text())["files"]
    assert {name for name, entry in recorded.items() if entry["command"] == "predict"} == expected
    assert Outputs(out, "predict").foreign() == [out / "notes.txt"]  # the rest is recorded as it is now
    assert {name: digest for name, digest in digests(out).items() if name in users} == users


def _failing_replace(monkeypatch, out: Path, after: int, failure: BaseException) -> None:
    """``os.replace`` into ``out`` fails with ``failure`` once ``after`` output files have landed there: an
    OSError (a full disk) fails every write after that, the record's too; a KeyboardInterrupt comes once, just
    after the next file landed (Ctrl+C at that moment)."""
    real_replace, landed, interrupted = os.replace, [], []

    def replace(source, target, *args, **kwargs):
        counted = Path(target).parent == out and not Path(target).name.startswith(".")
        if Path(target).parent != out or interrupted or (len(landed) < after and not counted):
            return real_replace(source, target, *args, **kwargs)
        if len(landed) < after:
            landed.append(target)
            return real_replace(source, target, *args, **kwargs)
        if isinstance(failure, KeyboardInterrupt):
            real_replace(source, target, *args, **kwargs)
            interrupted.append(target)
        raise failure

    monkeypatch.setattr(os, "replace", replace)


# --- an interrupted predict is continued, without --overwrite --------------------------------------------


def test_a_predict_stopped_by_a_full_disk_is_continued(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    stems = _photos(tmp_path / "photos", 3)
    out, users = _out_with_a_users_file(tmp_path)
    argv = ["predict", tiny_checkpoint, tmp_path / "photos", "--out", out, "--threads", "1", "--quiet"]
    # Five files land, then every write fails (the record's too), as on a full disk.
    _failing_replace(monkeypatch, out, 5, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    refused(capsys, argv, "01_overlay.png", os.strerror(errno.ENOSPC))  # the first file it could not write
    monkeypatch.undo()  # space was made
    assert main([str(arg) for arg in argv]) == 0, capsys.readouterr().err
    _check_finished(out, stems, users)


def test_a_predict_stopped_by_ctrl_c_is_continued(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    stems = _photos(tmp_path / "photos", 3)
    out, users = _out_with_a_users_file(tmp_path)
    argv = [str(arg) for arg in ["predict", tiny_checkpoint, tmp_path / "photos", "--out", out, "--threads", "1",
                                 "--quiet"]]
    _failing_replace(monkeypatch, out, 5, KeyboardInterrupt())  # Ctrl+C just after a file landed
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and "run the same command again to continue" in err, err  # even with --quiet
    monkeypatch.undo()
    (out / f".{RECORD}.k1ll3d_x.tmp").write_text("{")  # as a run killed while saving the record leaves it
    assert main(argv) == 0, capsys.readouterr().err
    _check_finished(out, stems, users)


def _wait_for_a_change(folder: Path, since: int, pid: int) -> None:
    """Until ``folder`` changes (a file is made or renamed there) after ``since``, or process ``pid`` ends."""
    deadline = time.monotonic() + 60
    while folder.stat().st_mtime_ns == since and time.monotonic() < deadline:
        if Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z":  # it has ended
            return
        time.sleep(0.002)


# Runs ``fcnseg.cli.main`` in a fresh fork for each line ``[argv, log]`` read on stdin, its stdout and stderr
# in ``log``; prints the child's pid, reads a signal number (0: none) and sends it, then prints the child's exit
# status (negative: the signal that ended it). The child is reaped only after the signal, so the pid cannot
# be another process's by then. Why forks: importing torch, fcnseg's commands and what building a net on the
# meta device imports (torch._dynamo) takes seconds on a small machine; forked from a process that has only
# imported them (no torch thread pool started yet), each run is the `fcnseg` command from its first line, in
# a process of its own.
_FORKING_CLI = """
import json, os, sys, traceback
import torch._dynamo
from fcnseg.cli import build_parser, main
build_parser()
for line in sys.stdin:
    argv, log = json.loads(line)
    pid = os.fork()
    if pid == 0:
        descriptor = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(descriptor, 1)
        os.dup2(descriptor, 2)
        code = 1
        try:
            try:
                code = main(argv)
            except BaseException:
                traceback.print_exc()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:  # a signal after main() returned is not the command's
            os._exit(code)
    print(pid, flush=True)
    kill = int(sys.stdin.readline())
    if kill:
        os.kill(pid, kill)
    print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
"""


def test_predict_killed_at_random_moments_is_continued_without_overwrite(tiny_checkpoint, tmp_path, capsys):
    stems = _photos(tmp_path / "photos", 12)
    out, users = _out_with_a_users_file(tmp_path)
    argv = ["predict", str(tiny_checkpoint), str(tmp_path / "photos"), "--out", str(out), "--threads", "1", "--quiet"]
    rng = random.Random(20240611)  # the same kills every time the test runs
    kills = [signal.SIGINT, signal.SIGTERM, signal.SIGKILL] * 3 + [signal.SIGKILL]
    rng.shuffle(kills)
    cli = subprocess.Popen([sys.executable, "-c", _FORKING_CLI], env={**os.environ, "OMP_NUM_THREADS": "1"},
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        for kill in kills:  # each run is the re-run of the one killed before it: no --overwrite
            since, log = out.stat().st_mtime_ns, tmp_path / "err.txt"
            cli.stdin.write(json.dumps([argv, str(log)]) + "\n")
            cli.stdin.flush()
            pid = int(cli.stdout.readline())
            _wait_for_a_change(out, since, pid)  # it is writing: outputs, or the record
            time.sleep(rng.uniform(0.0, 0.4))
            cli.stdin.write(f"{kill.value}\n")
            cli.stdin.flush()
            code, err = int(cli.stdout.readline()), log.read_text()
            assert code in (0, 130, 143, -kill), f"{kill!r}: exit {code}: {err}"  # 0: it finished first
            assert "error" not in err and "Traceback" not in err, err
    finally:
        cli.stdin.close()
        cli.wait(timeout=60)
    capsys.readouterr()
    assert main(argv) == 0  # the last run is not stopped
    one_line_error(capsys.readouterr().err, "12", "wrote")
    _check_finished(out, stems, users)


# --- one run at a time per output folder: predict and eval --out -----------------------------------------


def test_a_second_predict_or_eval_into_a_busy_folder_is_refused(tiny_checkpoint, tmp_path, capsys):
    stems = _photos(tmp_path / "photos", 24)
    out, users = _out_with_a_users_file(tmp_path)
    argv = ["predict", str(tiny_checkpoint), str(tmp_path / "photos"), "--out", str(out), "--threads", "1", "--quiet"]
    first = subprocess.Popen([sys.executable, "-m", "fcnseg.cli", *argv], env={**os.environ, "OMP_NUM_THREADS": "1"},
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (out / "00_mask.png").exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        first.send_signal(signal.SIGSTOP)  # held still, halfway through, holding the folder
        assert first.poll() is None and not (out / f"{stems[-1]}_mask.png").exists(), "it finished before the test"
        during = digests(out)
        refused(capsys, argv, out, f"pid {first.pid}")
        refused(capsys, ["eval", tiny_checkpoint, "--dataset", "synthetic", "--limit", "1", "--workers", "0",
                         "--threads", "1", "--out", out], out, f"pid {first.pid}")
        assert digests(out) == during  # the refused commands changed nothing
    finally:
        first.send_signal(signal.SIGCONT)
    assert first.wait(timeout=120) == 0, first.stderr.read()
    assert main(argv) == 0  # free again
    _check_finished(out, stems, users)


def test_eval_holds_its_out_folder_while_it_scores(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    import fcnseg.commands.evaluate as eval_command

    write_png(tmp_path / "a.png")
    out = tmp_path / "report"
    predict = ["predict", tiny_checkpoint, tmp_path / "a.png", "--out", out, "--threads", "1"]
    lines, real_evaluate = [], eval_command.evaluate

    def evaluate_while_a_predict_tries(*args, **kwargs):
        lines.append(refused(capsys, predict, out, f"pid {os.getpid()}"))  # flock: a second open is refused
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(eval_command, "evaluate", evaluate_while_a_predict_tries)
    argv = ["eval", str(tiny_checkpoint), "--dataset", "synthetic", "--limit", "1", "--workers", "0", "--threads", "1",
            "--out", str(out)]
    assert main(argv) == 0 and len(lines) == 1
    assert (out / "metrics.json").is_file()


def test_an_earlier_reports_file_changed_since_is_said_so_not_called_someone_elses(tiny_checkpoint, tmp_path, capsys):
    # After `touch OUT/metrics.json` the refusal said it "was not written by an earlier fcnseg eval"; it was.
    out = tmp_path / "report"
    argv = ["eval", str(tiny_checkpoint), "--dataset", "synthetic", "--limit", "1", "--workers", "0", "--threads", "1",
            "--quiet", "--out", str(out)]
    assert main(argv) == 0
    os.utime(out / "metrics.json", ns=(0, 0))
    (out / "mine.txt").write_text("the user's")
    line = refused(capsys, argv, out / "metrics.json", "changed since", "--overwrite")
    assert "not written" not in line and "confusion.png" not in line, line
    assert main([*argv, "--overwrite"]) == 0 and (out / "mine.txt").read_text() == "the user's"


# --- inputs that are symbolic links leading nowhere ------------------------------------------------------


@pytest.mark.parametrize("link", ["loop", "dangling"])
def test_a_link_leading_nowhere_is_reported_not_skipped(tiny_checkpoint, tmp_path, capsys, link):
    photos = tmp_path / "photos"
    stems = _photos(photos, 4)
    bad = photos / "bad.png"
    os.symlink("bad.png" if link == "loop" else "gone.png", bad)  # ln -s bad.png bad.png: a link to itself
    why = "symbolic link loop" if link == "loop" else "gone.png"
    for given in (photos, bad, photos / "*.png"):  # in a folder, by name, by a pattern
        out = tmp_path / f"out-{len(list(tmp_path.iterdir()))}"
        capsys.readouterr()
        code = main(["predict", str(tiny_checkpoint), str(given), "--out", str(out), "--threads", "1", "--quiet"])
        err = capsys.readouterr().err
        assert code == 1 and "Traceback" not in err, err  # as for any other unreadable input
        heading, *report = err.strip().split("\n")[-2:]  # the report at the end: a heading, then one per input
        assert heading.startswith("fcnseg predict: 1 of ") and "could not be segmented" in heading, err
        assert mentions(report[0], str(bad)) and mentions(report[0], why), err  # which input, and why
        written = stems if given != bad else []
        assert sorted(p.name for p in out.glob("*_mask.png")) == [f"{stem}_mask.png" for stem in written]


# --- links of the user's in the output folder -------------------------------------------------------------


@pytest.mark.parametrize("target", ["nowhere.png", "elsewhere"])
def test_a_users_link_named_like_an_output_is_refused(tiny_checkpoint, tmp_path, capsys, target):
    # A link of the user's where an output goes: one leading nowhere was replaced silently, one to a file outside
    # the folder ended in a traceback (its path resolved outside the folder).
    image, out = write_png(tmp_path / "a.png"), tmp_path / "out"
    out.mkdir()
    (tmp_path / "elsewhere").write_text("the user's file, outside the folder\n")
    os.symlink(tmp_path / target if target == "elsewhere" else target, out / "a_mask.png")
    argv = ["predict", tiny_checkpoint, image, "--out", out, "--threads", "1", "--quiet"]
    refused(capsys, argv, "a_mask.png", "--overwrite")
    assert os.readlink(out / "a_mask.png") == str(tmp_path / target if target == "elsewhere" else target)
    assert main([str(arg) for arg in [*argv, "--overwrite"]]) == 0  # asked for: the link is replaced, not its file
    assert not (out / "a_mask.png").is_symlink()
    assert (tmp_path / "elsewhere").read_text() == "the user's file, outside the folder\n"


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_an_export_stopped_just_after_its_file_landed_is_redone_without_overwrite(tiny_checkpoint, tmp_path,
                                                                                   capsys, monkeypatch, fmt):
    # The file was renamed into place and the process stopped before its record was saved: the rerun took
    # fcnseg's own export for the user's file and asked for --overwrite.
    out = tmp_path / "exports"
    out.mkdir()
    command = ["export", str(tiny_checkpoint), "--format", fmt, "--out", str(out / f"tiny.{fmt}"), "--threads", "1"]
    _failing_replace(monkeypatch, out, after=0, failure=KeyboardInterrupt())
    assert main(command) != 0
    assert (out / f"tiny.{fmt}").is_file()
    monkeypatch.undo()
    assert main(command) == 0, capsys.readouterr().err
    assert Outputs(out, "export").foreign() == []


def test_an_export_into_a_folder_a_run_holds_is_refused(tiny_checkpoint, tmp_path, capsys):
    # Two commands rewriting one folder's record at once could drop each other's entries (then a resumed
    # training took its own last.pth for the user's file).
    from fcnseg.outputs import folder_lock

    run = tmp_path / "run"
    with folder_lock(run, "fcnseg train"):
        for command in (["export", tiny_checkpoint], ["convert", tiny_checkpoint]):
            refused(capsys, [*command, "--out", run / "model.out"], str(run), "in use", "fcnseg train")
        assert os.listdir(run) == [LOCK]


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_file_made_at_the_out_path_while_an_export_runs_is_kept(tiny_checkpoint, tmp_path, capsys, monkeypatch,
                                                                   overwrite):
    # The check that --out is free ran only at the start: a file the user (or a second export of the same
    # --out) put there while the export ran was replaced at the end without a word.
    import fcnseg.commands.export as export

    out = tmp_path / "tiny.pt"
    read = export.model_from_checkpoint

    def read_then_the_user_writes(*args, **kwargs):
        out.write_text("the user's file, made while the export ran\n")
        return read(*args, **kwargs)

    monkeypatch.setattr(export, "model_from_checkpoint", read_then_the_user_writes)
    command = ["export", tiny_checkpoint, "--format", "torchscript", "--out", out, "--threads", 1]
    if overwrite:  # asked for: replaced
        assert main([str(arg) for arg in [*command, "--overwrite"]]) == 0, capsys.readouterr().err
        assert out.read_bytes()[:2] == b"PK"
        return
    refused(capsys, command, str(out), "made by another process", "--overwrite")
    assert out.read_text() == "the user's file, made while the export ran\n"
    assert sorted(os.listdir(tmp_path)) == ["tiny.pt"]


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_a_child_forked_while_a_folder_is_held_does_not_hold_it(tmp_path):
    """A training's data-loader workers (forked children) shared its folder lock: after a kill -9 of the training
    they held the folder for the seconds they took to notice, and an immediate --resume was refused."""
    import fcntl

    from fcnseg.outputs import LOCK, folder_lock

    with folder_lock(tmp_path, "fcnseg train"):
        descriptor = next(int(name) for name in os.listdir("/proc/self/fd")
                          if _link(f"/proc/self/fd/{name}") == str(tmp_path / LOCK))
        ready, told = os.pipe()
        child = os.fork()
        if child == 0:  # the worker: sits until it is killed, as a loader worker waits for work
            os.write(told, b"x")  # fork() has returned here: the at-fork handlers have run
            signal.pause()
            os._exit(0)
        os.read(ready, 1)  # a sleep was a guess on a loaded machine
        os.close(ready)
        os.close(told)
        held_by_child = _link(f"/proc/{child}/fd/{descriptor}")
    try:
        assert held_by_child == os.devnull
        with open(tmp_path / LOCK, "a+") as probe:  # the holder let go: the folder is free though the child lives
            fcntl.flock(probe.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)


def _link(path):
    try:
        return os.readlink(path)
    except OSError:
        return None


def test_a_legal_long_name_is_written_and_its_temporary_found(tmp_path, capsys):
    """predict of an image named with 236 characters: its mask's name (245) is legal, but the temporary file's
    (".NAME.RANDOM.tmp", 259) was not: "File name too long" for the mask, and the run stopped."""
    from fcnseg.atomic import atomic_path, remove_temporaries

    name = "a" * 236 + "_mask.png"
    with atomic_path(tmp_path / name) as tmp:
        tmp.write_bytes(b"mask")
        assert len(tmp.name.encode()) <= 255
        (tmp_path / "kept.tmp.copy").write_bytes(tmp.name.encode())
    assert (tmp_path / name).read_bytes() == b"mask"
    left = tmp_path / (open(tmp_path / "kept.tmp.copy").read())
    left.write_bytes(b"half")  # as a killed writer leaves it
    assert remove_temporaries(tmp_path, [name]) == [left] and not left.exists()
