"""fcnseg's messages go through :mod:`logging`: loggers under ``fcnseg`` that a library user routes or silences
with the standard API; the CLI prints them once as ``fcnseg COMMAND: ...`` (notes hidden by --quiet) and
leaves logging as it found it; int8 quantisation leaves the root logger alone."""

from __future__ import annotations

import logging
import sys

import pytest

from fcnseg.cli import main, messages
from fcnseg.train.config import TrainConfig
from fcnseg.train.folder import finished

from .helpers import TINY_TRAIN


class _CurrentStderr(logging.Handler):
    """What ``logging.basicConfig()`` gives a program: every record on stderr (here the captured one)."""

    def emit(self, record: logging.LogRecord) -> None:
        sys.stderr.write(f"ROOT {record.name}: {record.getMessage()}\n")


@pytest.fixture
def fcnseg_logger():
    """The ``fcnseg`` logger, its level and handlers put back after the test."""
    logger = logging.getLogger("fcnseg")
    saved = logger.level, list(logger.handlers), logger.propagate
    yield logger
    logger.setLevel(saved[0])
    logger.handlers[:] = saved[1]
    logger.propagate = saved[2]


@pytest.fixture
def root_to_stderr():
    root = logging.getLogger()
    handler, level = _CurrentStderr(), root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield
    root.removeHandler(handler)
    root.setLevel(level)


def _finished_note(tmp_path) -> None:
    """A library call that logs a note (INFO, ``fcnseg.train.folder``): a run with nothing left to train."""
    assert finished({"iteration": 2}, TrainConfig(iterations=2, out=str(tmp_path / "run")))


def test_a_library_note_is_a_log_record_of_an_fcnseg_logger(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    _finished_note(tmp_path)
    [record] = [r for r in caplog.records if "has finished" in r.getMessage()]
    assert record.name == "fcnseg.train.folder" and record.levelno == logging.INFO


def test_a_library_user_silences_fcnseg_with_its_logger_level(tmp_path, caplog, fcnseg_logger):
    caplog.set_level(logging.INFO)
    fcnseg_logger.setLevel(logging.ERROR)
    _finished_note(tmp_path)
    assert not [r for r in caplog.records if r.name.startswith("fcnseg")]


def test_a_library_user_routes_fcnseg_with_a_handler(tmp_path, fcnseg_logger):
    seen: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = seen.append
    fcnseg_logger.addHandler(handler)
    fcnseg_logger.setLevel(logging.INFO)
    _finished_note(tmp_path)
    assert [r.name for r in seen] == ["fcnseg.train.folder"]


def test_basic_config_shows_fcnseg_messages(tmp_path, capsys, root_to_stderr):
    _finished_note(tmp_path)  # propagates to the root logger's handler, as after logging.basicConfig()
    assert "ROOT fcnseg.train.folder: " in capsys.readouterr().err


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("logging") / "run"
    assert main(["train", *TINY_TRAIN, "--iterations", "1", "--val-interval", "1", "--out", str(out)]) == 0
    return out


def test_the_cli_prints_a_note_once_with_its_prefix_and_puts_logging_back(finished_run, capsys, root_to_stderr,
                                                                         fcnseg_logger):
    before = fcnseg_logger.level, list(fcnseg_logger.handlers), fcnseg_logger.propagate
    capsys.readouterr()
    assert main(["train", "--out", str(finished_run), "--resume", "--threads", "1"]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "has finished" in line]
    # once, as the CLI prints it, although the root logger has a handler too
    assert len(lines) == 1 and lines[0].startswith(f"fcnseg train: {finished_run} has finished: 1 of 1"), lines
    assert (fcnseg_logger.level, fcnseg_logger.handlers, fcnseg_logger.propagate) == before


def test_quiet_hides_notes_not_warnings(finished_run, capsys, monkeypatch):
    from fcnseg.train.log import BoardLog

    capsys.readouterr()
    assert main(["train", "--out", str(finished_run), "--resume", "--threads", "1", "--quiet"]) == 0
    assert capsys.readouterr().err == ""
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # its import fails: not installed
    with messages("train", quiet=True):
        assert BoardLog(finished_run / "tensorboard", enabled=True).writer is None
    assert capsys.readouterr().err.startswith("fcnseg train: tensorboard is not installed")


def test_the_cli_handler_writes_to_the_stderr_of_the_moment(capsys, fcnseg_logger):
    with messages("predict", quiet=False):
        capsys.readouterr()  # pytest's capture may swap sys.stderr after the handler is made
        logging.getLogger("fcnseg.api").info("note: %s", "something")
        assert capsys.readouterr().err == "fcnseg predict: note: something\n"


def test_quantising_leaves_the_root_logger_alone(tiny_checkpoint, tmp_path, capsys, monkeypatch, one_thread):
    # Today's regression: the root logger's level was set to ERROR while ONNX Runtime quantised, which
    # silenced every other logger of the program meanwhile, and its logging.warning() calls configured a
    # stderr handler on a root logger that had none.
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    import fcnseg.quantize as quantize

    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])  # a program that configured no logging
    monkeypatch.setattr(root, "level", logging.WARNING)
    reader = quantize._Reader.get_next

    def get_next(self):  # the program's own warnings, logged while ONNX Runtime calibrates
        logging.getLogger("a.program").warning("the program's warning")
        return reader(self)

    monkeypatch.setattr(quantize._Reader, "get_next", get_next)
    monkeypatch.setattr(quantize, "_agreement", lambda *args: 1.0)  # test_int8 checks it; not needed here
    calibration = quantize.Calibration("synthetic", images=1, options={"num_images": 1, "height": 40, "width": 48})
    quantize.export_int8(tiny_checkpoint, tmp_path / "net.onnx", calibration)
    assert (root.level, root.handlers, root.filters) == (logging.WARNING, [], [])
    assert logging.getLogger("onnxruntime.quantization").level == logging.NOTSET
    err = capsys.readouterr().err
    assert "the program's warning" in err  # shown as Python shows a warning when nothing is configured
    assert "pre-processing" not in err  # ONNX Runtime's advice stays quiet
