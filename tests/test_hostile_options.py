"""Hostile use, second pass: names that are terminal escape sequences, option values out of range (nan, inf,
negative, zero), Ctrl+C during start-up, and messages that named the wrong cause."""

import errno
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
import unicodedata
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

import fcnseg.commands.serve as serve_command
import fcnseg.errors as errors
import fcnseg.memory as memory
from fcnseg.checkpoint import save_model
from fcnseg.cli import main, messages
from fcnseg.data.folder import FolderDataset
from fcnseg.data.info import DatasetInfo
from fcnseg.errors import LimitError
from fcnseg.inference import InferenceOptions

from .helpers import TINY_TRAIN, folder_dataset, mentions, one_line_error, random_fcn, refused, write_png

# What a hostile classes.txt or checkpoint can hold: clear the screen, set the window title, a C1 CSI, DEL,
# a right-to-left override (the rest of the line reads backwards); a checkpoint's names, a line separator too.
HOSTILE = ["road\x1b[2J\x1b]0;pwned\x07", "\u202esky", "car\x9b31m\x7f"]
UNSAFE_CATEGORIES = {"Cc", "Cf", "Cs", "Zl", "Zp"}


def terminal_safe(text: str) -> bool:
    """No control, format or separator character but the line breaks between lines."""
    return all(char == "\n" or unicodedata.category(char) not in UNSAFE_CATEGORIES for char in text)


def _flags(value) -> str:
    """Test ids: the flags and values given."""
    return " ".join(value) if isinstance(value, list) else ""


def usage_or_one_line(capsys, argv: list, *names) -> str:
    """``fcnseg ARGV`` refused with exit code 2 and no traceback: argparse's usage error (a usage, then
    ``fcnseg COMMAND: error: argument --FLAG: ...``) or the one line of a refused value; the last line names
    each of ``names``. Returns that line."""
    capsys.readouterr()
    argv = [str(arg) for arg in argv]
    try:
        code = main(argv)
    except SystemExit as exited:
        code = exited.code
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err, err
        line = err.strip().splitlines()[-1]
        assert line.startswith(f"fcnseg {argv[0]}: error: argument "), err
    else:
        err = capsys.readouterr().err
        assert code == 2, f"exit {code}: {err}"
        line = one_line_error(err, command=argv[0])
    for name in names:
        assert mentions(line, name), f"{name!r} not in {line!r}"
    return line


@pytest.fixture(scope="module")
def hostile_root(tmp_path_factory):
    """A folder dataset of three classes whose names are escape sequences."""
    root = folder_dataset(tmp_path_factory.mktemp("hostile") / "data", classes=3)
    (root / "classes.txt").write_text("".join(f"{name}\n" for name in HOSTILE), encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def hostile_checkpoint(hostile_root):
    info = FolderDataset(hostile_root).info
    info = DatasetInfo("roads\x1b]0;title\x07\u202e\u2028", info.class_names, info.palette)
    return save_model(random_fcn(num_classes=3), info, hostile_root.parent / "hostile.pth")


# --- 6. names that are escape sequences reach the terminal escaped, files keep them ------------------------


def test_printable_escapes_control_and_format_characters_only():
    assert errors.printable("a\x1b[2Jb\x07\x9b\x7f\u202ec\u2028\ufeff\udcff") == \
        "a\\x1b[2Jb\\x07\\x9b\\x7f\\u202ec\\u2028\\ufeff\\udcff"
    assert errors.printable("one\ntwo\r") == "one\\ntwo\\r"
    assert errors.printable("one\ntwo\r", newlines=True) == "one\ntwo\\r"  # messages of several lines keep them
    assert errors.printable("straße 道路 café road_1 (x) / C:\\path") == "straße 道路 café road_1 (x) / C:\\path"


def test_eval_prints_hostile_class_names_escaped_and_writes_them_as_they_are(hostile_root, hostile_checkpoint,
                                                                             tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["eval", str(hostile_checkpoint), "--dataset", "folder", "--root", str(hostile_root), "--split",
                 "all", "--workers", "0", "--threads", "1", "--quiet", "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert terminal_safe(printed.out) and terminal_safe(printed.err), repr(printed)
    for shown in ("road\\x1b[2J\\x1b]0;pwned\\x07", "\\u202esky", "car\\x9b31m\\x7f"):
        assert f"| {shown} |" in printed.out, printed.out  # one table row each, readable
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["class_names"] == HOSTILE and list(metrics["per_class"]) == HOSTILE


def test_serve_start_line_escapes_the_checkpoint_name_and_path(hostile_checkpoint, tmp_path, capsys, monkeypatch):
    checkpoint = tmp_path / "model\u202egnp.pth"
    checkpoint.write_bytes(hostile_checkpoint.read_bytes())
    real = serve_command.make_server

    def started_and_stopped(*args, **kwargs):  # the start line is printed, then serving ends at once
        server = real(*args, **kwargs)
        server.serve_forever = lambda *a, **k: None
        return server

    monkeypatch.setattr(serve_command, "make_server", started_and_stopped)
    assert main(["serve", str(checkpoint), "--port", "0", "--threads", "1", "--quiet"]) == 0
    printed = capsys.readouterr()
    assert terminal_safe(printed.out) and terminal_safe(printed.err), repr(printed)
    assert "roads\\x1b]0;title\\x07\\u202e\\u2028" in printed.out and "model\\u202egnp.pth" in printed.out, printed.out


def test_one_line_errors_and_messages_escape_the_names_they_quote(tiny_checkpoint, tmp_path, capsys):
    missing = tmp_path / "photo\x1b[2J\u202e.png"
    line = refused(capsys, ["predict", tiny_checkpoint, missing, "--out", tmp_path / "out"], "photo\\x1b[2J\\u202e")
    assert terminal_safe(line), repr(line)
    with messages("predict", quiet=False):
        logging.getLogger("fcnseg.test").warning("class %s is rare", HOSTILE[0])
    err = capsys.readouterr().err
    assert terminal_safe(err) and "class road\\x1b[2J\\x1b]0;pwned\\x07 is rare" in err, repr(err)


def test_predict_escapes_the_names_of_images_that_fail(tiny_checkpoint, tmp_path, capsys):
    bad = tmp_path / "in" / "bad\x1b]0;x\x07.png"
    bad.parent.mkdir()
    bad.write_bytes(b"not an image" * 10)
    assert main(["predict", str(tiny_checkpoint), str(bad), "--out", str(tmp_path / "out"), "--threads", "1"]) == 1
    err = capsys.readouterr().err
    assert terminal_safe(err) and "bad\\x1b]0;x\\x07.png" in err, repr(err)


# --- 7. every numeric option: nan, inf and out-of-range values are refused in one line --------------------


@pytest.mark.parametrize("argv, names", ids=_flags, argvalues=[
    (["--scales", "nan"], ("--scales", "nan")),  # the flag, not the field ("window must be ..." named neither)
    (["--scales", "inf"], ("--scales", "inf")),
    (["--scales", "1", "1e400"], ("--scales", "inf")),
    (["--scales", "-0.5"], ("--scales", "-0.5")),
    (["--overlap", "inf"], ("--overlap", "inf")),
    (["--window", "0", "64"], ("--window", "0")),
    (["--batch-size", "0"], ("--batch-size", "0")),
    (["--opacity", "nan"], ("--opacity", "nan")),
    (["--depth-scale", "inf"], ("--depth-scale", "inf")),
    (["--intrinsics", "nan", "500", "300", "200"], ("--intrinsics", "nan")),
    (["--max-memory", "0"], ("--max-memory", "'0'")),
    (["--max-pixels", "0"], ("--max-pixels", "0")),
    (["--threads", "0"], ("--threads", "0")),
])
def test_predict_options_out_of_range(tiny_checkpoint, tmp_path, capsys, argv, names):
    image = write_png(tmp_path / "a.png")
    usage_or_one_line(capsys, ["predict", tiny_checkpoint, image, "--out", tmp_path / "out", *argv], *names)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, names", ids=_flags, argvalues=[
    (["--scales", "nan"], ("scales", "nan")),  # was accepted: every upload then failed
    (["--max-upload-mb", "nan"], ("--max-upload-mb", "nan")),
    (["--max-upload-mb", "inf"], ("--max-upload-mb", "inf")),
    (["--max-upload-mb", "-1"], ("--max-upload-mb", "-1")),
    (["--max-upload-mb", "0"], ("--max-upload-mb", "0")),
    (["--port", "70000"], ("--port", "70000")),
    (["--port", "-1"], ("--port", "-1")),
    (["--queue", "0"], ("--queue", "0")),
])
def test_serve_options_out_of_range_are_refused_at_start_up(tiny_checkpoint, capsys, monkeypatch, argv, names):
    monkeypatch.setattr(serve_command, "make_server", lambda *a, **k: pytest.fail("it started serving"))
    usage_or_one_line(capsys, ["serve", tiny_checkpoint, *argv, "--threads", "1"], *names)


@pytest.mark.parametrize("argv, names", ids=_flags, argvalues=[
    (["--workers", "-1"], ("--workers", "-1")),
    (["--limit", "0"], ("--limit", "0")),
    (["--scales", "inf"], ("scales", "inf")),
])
def test_eval_options_out_of_range(tiny_checkpoint, capsys, argv, names):
    usage_or_one_line(capsys, ["eval", tiny_checkpoint, "--dataset", "synthetic", *argv], *names)


@pytest.mark.parametrize("argv, names", ids=_flags, argvalues=[
    (["--opset", "0"], ("--opset", "0")),
    (["--opset", "10"], ("--opset", "10", "11")),  # taken, then ~220 lines of torch's graph dump (padding needs 11)
    (["--opset", "99"], ("--opset", "99", "20")),  # taken, then ~225 lines of it: newer than torch writes
    (["--int8", "--opset", "12", "--calibrate", "dataset=synthetic"], ("--int8", "--opset", "13", "12")),
    (["--int8", "--calibrate", "dataset=synthetic", "images=2", "images=3"], ("images=", "twice", "'2'", "'3'")),
    (["--check-sizes", "0x10"], ("--check-sizes", "0x10")),
    (["--int8", "--calibrate", "dataset=synthetic", "images=0"], ("images", "0")),
    (["--int8", "--calibrate", "dataset=synthetic", "images=-3"], ("images", "-3")),
])
def test_export_options_out_of_range(tiny_checkpoint, tmp_path, capsys, argv, names):
    usage_or_one_line(capsys, ["export", tiny_checkpoint, "--out", tmp_path / "m.onnx", *argv], *names)
    assert not (tmp_path / "m.onnx").exists()


def test_the_newest_opset_is_the_one_torch_writes():
    from torch.onnx._constants import ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET

    from fcnseg.commands.export import NEWEST_OPSET

    assert NEWEST_OPSET == ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET


def test_an_out_that_is_a_folder_a_checkpoints_name_or_an_unexpanded_tilde_is_refused(tiny_checkpoint,
                                                                                                tmp_path, capsys,
                                                                                                monkeypatch):
    # A folder: refused as another's file (--overwrite then ran the whole export before "Is a directory");
    # model.pth: ONNX written under a checkpoint's name; --out=~/m.onnx: a folder named ~ made here.
    (tmp_path / "dir.onnx").mkdir()
    monkeypatch.chdir(tmp_path)
    for out, names in ((tmp_path / "dir.onnx", ("is a folder", "model.onnx")),
                       (tmp_path / "model.pth", ("fcnseg checkpoint", "model.onnx")),
                       ("~/m.onnx", ("~", "$HOME"))):
        for extra in ([], ["--overwrite"]):
            usage_or_one_line(capsys, ["export", tiny_checkpoint, f"--out={out}", *extra], *names)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.onnx"]
    # fcnseg train's --out is a config field, not that flag type: it made ./~/run ("checkpoints: ~/run/last.pth").
    for argv in (["--out=~/run"], ["--set", "out=~/run"]):
        usage_or_one_line(capsys, ["train", "--iterations", "1", *argv], "~", "$HOME")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.onnx"]


TRAIN_CASES = [
    (["--lr", "-1"], ("lr", "-1")),
    (["--lr", "nan"], ("lr", "nan")),
    (["--seed", "-1"], ("seed", "-1")),
    (["--color-jitter", "nan"], ("color_jitter", "nan")),
    (["--color-jitter", "-0.2"], ("color_jitter", "-0.2")),
    (["--momentum", "1.5"], ("momentum", "1.5")),
    (["--weight-decay", "-1"], ("weight_decay", "-1")),
    (["--poly-power", "inf"], ("poly_power", "inf")),
    (["--warmup-iterations", "-5"], ("warmup_iterations", "-5")),
    (["--width", "inf"], ("width", "inf")),
    (["--dropout", "nan"], ("dropout", "nan")),
    (["--ema-decay", "nan"], ("ema_decay", "nan")),
    (["--val-limit", "0"], ("val_limit", "0")),
    (["--scale-range", "nan", "2"], ("scale_range", "nan")),
    (["--scale-range", "2", "0.5"], ("scale_range", "2", "0.5")),
    (["--crop-size", "0", "32"], ("crop_size", "0")),
    (["--class-weights", "0", "0", "0"], ("class_weights", "0")),  # every class weighed 0: nothing to learn
    (["--class-weights", "1", "-1", "1"], ("class_weights", "-1")),
    (["--class-weights", "1", "nan", "1"], ("class_weights", "nan")),
    (["--class-weights", "inf", "1", "1"], ("class_weights", "inf")),
]


@pytest.mark.parametrize("argv, names", TRAIN_CASES, ids=_flags)
def test_train_options_out_of_range(tmp_path, capsys, argv, names):
    usage_or_one_line(capsys, ["train", *TINY_TRAIN, "--iterations", "1", *argv, "--out", tmp_path / "run"], *names)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("key, value, shown", [
    ("lr", float("nan"), "nan"), ("seed", -1, "-1"), ("color_jitter", float("inf"), "inf"), ("momentum", -0.1, "-0.1"),
    ("class_weights", [0.0, 0.0], "0"), ("inverse_log_c", float("nan"), "nan")])
def test_a_config_file_is_held_to_the_same_ranges(tmp_path, capsys, key, value, shown):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"iterations": 1, key: value}))
    usage_or_one_line(capsys, ["train", "--config", config, "--out", tmp_path / "run"], config, key, shown)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("content, names", [
    (b"\x89PNG\r\n\x1a\n\x00", ["not text"]),  # a picture given as the config: a UnicodeDecodeError traceback
    (b"lr: [0.01\n", ["not valid YAML", "(line 2, column 1)"]),  # was PyYAML's message over seven lines
    (None, ["Is a directory"]),  # was "[Errno 21] Is a directory: 'PATH'"
])
def test_a_config_file_that_cannot_be_read_is_one_line(tmp_path, capsys, content, names):
    config = tmp_path / "config.yaml"
    config.mkdir() if content is None else config.write_bytes(content)
    line = refused(capsys, ["train", "--config", config, "--out", tmp_path / "run"], config, *names)
    assert "Errno" not in line and "<unicode string>" not in line
    assert not (tmp_path / "run").exists()
    if content is not None:  # a run folder whose config.yaml was damaged, resumed: the same, naming the run's
        run = tmp_path / "damaged_run"
        run.mkdir()
        (run / "config.yaml").write_bytes(content)
        refused(capsys, ["train", "--resume", "--out", run], run / "config.yaml", "the run's config", *names)


# --- 10. Ctrl+C from the first instant: one line, exit code 130 ---------------------------------------------


def default_ctrl_c() -> None:
    """In the child: Ctrl+C as a terminal gives it. A shell started in the background starts its children with
    SIGINT ignored, which exec keeps and which stops Python from installing its handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("delay", [0.01, 0.05, 0.2, 0.5])
def test_ctrl_c_during_start_up_says_interrupted(tiny_checkpoint, tmp_path, delay):
    image = write_png(tmp_path / "a.png")
    # -X importtime: Python reports each import as it ends, so the signal is sent DELAY after fcnseg.cli made its last
    # import at the top (before it: Python's own start-up), while torch is imported (seconds), not yet segmenting.
    run = subprocess.Popen([sys.executable, "-X", "importtime", "-m", "fcnseg.cli", "predict", str(tiny_checkpoint),
                            str(image), "--out", str(tmp_path / "out"), "--threads", "1"],
                           env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, preexec_fn=default_ctrl_c)
    try:
        for line in run.stderr:
            if line.rstrip().endswith(" fcnseg.commands"):  # imported by fcnseg.cli at its top
                break
        time.sleep(delay)
        run.send_signal(signal.SIGINT)
        out, err = run.communicate(timeout=120)
    finally:
        run.kill()
    said = [line for line in err.splitlines() if not line.startswith("import time:")]
    assert run.returncode == 130 and said == ["fcnseg: interrupted"], (delay, run.returncode, said)
    assert not (tmp_path / "out").exists()


def test_the_entry_module_imports_nothing_heavy_before_its_handler():
    # Everything slow to import (torch, numpy, PIL, tqdm) is imported inside main(), under its Ctrl+C handler.
    code = "import sys, fcnseg.cli; print(sorted(m for m in ('torch', 'numpy', 'PIL', 'tqdm') if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]", loaded


def test_ctrl_c_while_the_commands_load_is_exit_code_130(capsys, monkeypatch):
    import importlib

    def interrupted(name, *args):
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib, "import_module", interrupted)
    try:
        code = main(["predict", "model.pth", "a.png", "--out", "out"])
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped main()")
    assert code == 130
    err = capsys.readouterr().err
    assert err.strip() == "fcnseg: interrupted", err


def test_ctrl_c_that_a_library_swallows_while_the_commands_load_still_stops(capsys, monkeypatch):
    import importlib

    real = importlib.import_module

    def swallowing(name, *args):  # Ctrl+C while a library is imported, under its bare `except:`
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # Python runs the handler at its next check
        except KeyboardInterrupt:
            pass
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", swallowing)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's, even if pytest's was ignored
    try:
        code = main(["predict", "model.pth", "a.png", "--out", "out"])
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped main()")
    finally:
        signal.signal(signal.SIGINT, previous)
    assert code == 130 and capsys.readouterr().err.strip() == "fcnseg: interrupted"  # not run on as if not pressed


# --- 12. messages that named the wrong cause ----------------------------------------------------------------


@pytest.mark.parametrize("host, names", [
    ("999.1.1.1", ("not an IP address", "0 to 255")),  # refused before the model loads
    ("no-such-host.invalid", ("cannot be resolved",)),
])
def test_serve_on_a_host_that_is_no_address_says_so(tiny_checkpoint, capsys, host, names):
    line = refused(capsys, ["serve", tiny_checkpoint, "--host", host, "--port", "0", "--threads", "1"], "--host",
                   host, *names, "127.0.0.1")
    assert "another server" not in line and "in use" not in line, line


def test_serve_on_an_address_of_another_machine_says_so(tiny_checkpoint, capsys):
    with socket.socket() as probe:  # 192.0.2.1 is reserved for documentation: no machine has it
        try:
            probe.bind(("192.0.2.1", 0))
            pytest.skip("this machine has the address 192.0.2.1")
        except OSError as error:
            assert error.errno == errno.EADDRNOTAVAIL
    line = refused(capsys, ["serve", tiny_checkpoint, "--host", "192.0.2.1", "--port", "0", "--threads", "1"],
                   "192.0.2.1", "not an address of this machine", "--host")
    assert "another server" not in line, line


def test_sizes_are_shown_in_units_that_never_round_a_budget_to_zero():
    sizes = (0, 1, 1023, 1536, 500_000, 2**20, 68 * 2**20 + 1, int(10.8 * 2**30))
    assert [memory.format_bytes(n) for n in sizes] == \
        ["0 bytes", "1 byte", "1023 bytes", "1.5 KB", "488 KB", "1 MB", "68 MB", "10.8 GB"]


def test_a_budget_of_one_byte_is_not_called_0_mb(tiny_checkpoint, tmp_path, capsys):
    image = write_png(tmp_path / "a.png")
    assert main(["predict", str(tiny_checkpoint), str(image), "--out", str(tmp_path / "out"), "--max-memory", "1",
                 "--threads", "1", "--quiet"]) == 1  # the image fails: nothing fits in one byte
    err = capsys.readouterr().err
    assert "budget of 1 byte" in err and "0 MB" not in err and "Traceback" not in err, err


def test_a_need_just_over_the_budget_does_not_read_as_the_budget():
    # A 12000x12000 image under --max-memory 4GB was refused as needing "about 4 GB ..., more than the memory
    # budget of 4 GB" (it needed 4.05 GB).
    gib = 2**30
    assert memory.format_apart(4.05 * gib, 4 * gib) == ("4.05 GB", "4 GB")
    assert memory.format_apart(4.0012 * gib, 4 * gib) == ("4.001 GB", "4 GB")
    assert memory.format_apart(4 * gib + 1, 4 * gib) == ("4,294,967,297 bytes", "4,294,967,296 bytes")
    assert memory.format_apart(5 * gib, 4 * gib) == ("5 GB", "4 GB")  # one decimal when it is enough
    assert memory.format_apart(150.4 * 2**20, 150 * 2**20) == ("150.4 MB", "150 MB")  # from 100 on: one fewer
    spec = random_fcn().spec
    budget = memory.inference_bytes(spec, 1, 64, 64, InferenceOptions(mode="slide", window=(64, 64))) - 1000
    with pytest.raises(LimitError) as refusal:
        memory.fit(spec, 1, 64, 64, InferenceOptions(mode="slide", window=(64, 64)), budget, name="a.png")
    need, limit = re.search(r"needs about (.+?) even .* budget of (.+?);", str(refusal.value)).groups()
    assert need != limit, str(refusal.value)


@pytest.mark.parametrize("command", ["predict", "eval", "serve", "export"])
def test_a_folder_given_as_the_checkpoint_is_called_a_folder(tiny_checkpoint, tmp_path, capsys, command):
    run = tmp_path / "runs" / "exp"
    run.mkdir(parents=True)
    (run / "best.pth").write_bytes(tiny_checkpoint.read_bytes())
    argv = {"predict": ["predict", run, write_png(tmp_path / "a.png"), "--out", tmp_path / "out"],
            "eval": ["eval", run, "--dataset", "synthetic", "--limit", "1"],
            "serve": ["serve", run, "--port", "0"],
            "export": ["export", run, "--out", tmp_path / "m.onnx"]}[command]
    line = refused(capsys, [*argv, "--threads", "1"], run, "folder", ".pth", run / "best.pth")
    assert "not found" not in line, line


def test_a_read_only_file_system_is_not_called_permission_denied(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    # A read-only mount, as os.access and os.statvfs see one (mounting needs root).
    readonly = tmp_path / "mounted"
    readonly.mkdir()
    real_access, real_statvfs = os.access, os.statvfs

    def inside(path) -> bool:
        return Path(path).resolve().is_relative_to(readonly)

    monkeypatch.setattr(os, "access", lambda path, mode, **k: False if inside(path) and mode & os.W_OK
                        else real_access(path, mode, **k))
    monkeypatch.setattr(os, "statvfs", lambda path: SimpleNamespace(f_flag=os.ST_RDONLY) if inside(path)
                        else real_statvfs(path))
    image = write_png(tmp_path / "a.png")
    line = refused(capsys, ["predict", tiny_checkpoint, image, "--out", readonly / "out", "--threads", "1"],
                   readonly, "read-only file system")
    assert "permission" not in line, line


@pytest.mark.parametrize("options, names", [
    ("{num_images: abc}", ("num_images", "a whole number", "'abc'")),  # a TypeError in the reader
    ("{num_images: true}", ("num_images", "True")),  # trained on 1 image a split without a word
    ("{num_images: 4, height: 40.5}", ("height", "40.5")),  # a TypeError traceback before
    ("{num_images: 4, height: '64'}", ("height", "'64'", "str")),
])
def test_a_reader_option_of_the_wrong_type_is_one_line(tmp_path, capsys, options, names):
    refused(capsys, ["train", *TINY_TRAIN, "--set", f"dataset_options={options}", "--out", tmp_path / "run"],
            "dataset synthetic: option", *names)
    assert not (tmp_path / "run" / "last.pth").exists()


@pytest.mark.parametrize("command", [
    ["predict", "CHECKPOINT", "IMAGE"], ["eval", "CHECKPOINT", "--dataset", "synthetic"], ["export", "CHECKPOINT"],
    ["convert", "CHECKPOINT"], ["demo"], ["train", *TINY_TRAIN]])
def test_an_empty_out_is_refused_not_the_current_folder(tiny_checkpoint, tmp_path, capsys, monkeypatch, command):
    """--out "$OUT" with the variable unset wrote outputs (and fcnseg's record and lock) into the current folder."""
    monkeypatch.chdir(tmp_path)
    image = write_png(tmp_path / "in" / "a.png")
    given = {"CHECKPOINT": str(tiny_checkpoint), "IMAGE": str(image)}
    argv = [given.get(part, part) for part in command]
    usage_or_one_line(capsys, [*argv, "--out", ""], "empty")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["in"]
