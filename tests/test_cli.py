"""The command line as a whole: one line for user errors (also from DataLoader workers), tracebacks for
bugs, --threads and --quiet on every computing command, type-checked training options."""

import pytest
import torch
from PIL import Image

import fcnseg.commands.predict as predict_command
from fcnseg.cli import build_parser, main
from fcnseg.data.info import SYNTHETIC_ROADS
from fcnseg.data.synthetic import render_scene
from fcnseg.errors import DataError, user_message
from fcnseg.runtime import worker_init

from .helpers import folder_dataset, refused

COMPUTING = ("train", "eval", "predict", "export", "serve", "demo")


def test_every_computing_command_takes_threads_and_quiet():
    parser = build_parser()
    for command in COMPUTING:
        extra = {"train": [], "eval": ["c.pth", "--dataset", "synthetic"], "predict": ["c.pth", "x.png", "--out", "o"],
                 "export": ["c.pth", "--out", "o.onnx"], "serve": ["c.pth"], "demo": []}[command]
        args = parser.parse_args([command, *extra, "--threads", "3", "--quiet"])
        assert (args.threads, args.quiet) == (3, True), command


def test_version_names_fcnseg_and_torch(capsys):
    import importlib.metadata

    import fcnseg

    with pytest.raises(SystemExit) as caught:
        build_parser().parse_args(["--version"])
    assert caught.value.code == 0
    assert capsys.readouterr().out == f"fcnseg {fcnseg.__version__} (torch {importlib.metadata.version('torch')})\n"


def test_threads_are_set_before_the_work(tiny_checkpoint, tmp_path):
    before = torch.get_num_threads()
    Image.fromarray(render_scene(1, 48, 64)[0]).save(tmp_path / "a.png")
    try:
        assert main(["predict", str(tiny_checkpoint), str(tmp_path / "a.png"), "--out", str(tmp_path / "out"),
                     "--threads", "1", "--quiet"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_more_threads_than_four_per_usable_core_are_refused(tmp_path, capsys):
    # --threads 100000 ended in "RuntimeError: can't start new thread" (TensorBoard's writer), exit 139.
    from fcnseg.runtime import THREADS_PER_CORE, usable_cores

    assert THREADS_PER_CORE == 4  # what the docs and the message say
    most = THREADS_PER_CORE * usable_cores()
    refused(capsys, ["train", "--threads", str(most + 1), "--out", tmp_path / "run"], f"threads {most + 1}",
            f"at most {most}")
    assert not (tmp_path / "run").exists()


def test_quiet_drops_the_progress_lines_not_the_result(tiny_checkpoint, tmp_path, capsys):
    Image.fromarray(render_scene(1, 48, 64)[0]).save(tmp_path / "a.png")
    argv = ["predict", str(tiny_checkpoint), str(tmp_path / "a.png"), "--threads", "1"]
    assert main([*argv, "--out", str(tmp_path / "loud")]) == 0
    loud = capsys.readouterr().err.strip().splitlines()
    assert any("a.png" in line and "64x48" in line for line in loud), loud  # a progress line for the image
    assert main([*argv, "--out", str(tmp_path / "quiet"), "--quiet"]) == 0
    quiet = capsys.readouterr().err.strip().splitlines()
    assert len(quiet) == 1 and str(tmp_path / "quiet") in quiet[0] and "a.png" not in quiet[0], quiet  # the result


def test_an_error_in_a_dataloader_worker_is_one_line(tiny_checkpoint, tmp_path, capsys):
    root = folder_dataset(tmp_path / "data", broken=["2"])
    (root / "classes.txt").write_text("".join(f"{name}\n" for name in SYNTHETIC_ROADS.class_names))  # the net's
    refused(capsys, ["eval", tiny_checkpoint, "--dataset", "folder", "--root", root, "--split", "all", "--workers",
                     "2", "--threads", "1", "--device", "cpu"], root / "images" / "2.png")


def test_user_message_unwraps_what_a_worker_raised():
    class Broken(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, index):
            raise DataError(f"label {index}.png has values 12 that are\nneither classes nor ignored")

    loader = torch.utils.data.DataLoader(Broken(), num_workers=1, worker_init_fn=worker_init)
    with pytest.raises(DataError) as caught:
        next(iter(loader))
    assert "Caught DataError in DataLoader worker" in str(caught.value)  # what PyTorch hands over
    assert user_message(caught.value) == "label 0.png has values 12 that are\nneither classes nor ignored"
    assert user_message(DataError("plain")) == "plain"


def test_a_bug_keeps_its_traceback(monkeypatch, tmp_path):
    def buggy(args):
        raise ValueError("an internal mistake")

    monkeypatch.setattr(predict_command, "run", buggy)
    with pytest.raises(ValueError, match="an internal mistake"):
        main(["predict", "c.pth", str(tmp_path), "--out", str(tmp_path / "o")])


def test_class_weights_flag_takes_numbers_or_a_method():
    assert build_parser().parse_args(["train", "--class-weights", "1", "2.5"]).class_weights == [1.0, 2.5]
    assert build_parser().parse_args(["train", "--class-weights", "inverse_log"]).class_weights == "inverse_log"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--class-weights", "1", "inverse_log"])


@pytest.mark.parametrize("argv, names", [  # the option, the value given, and what it takes where that is the fix
    (["--set", "lr=abc"], ("lr", "'abc'")),
    (["--iterations", "0"], ("iterations", "at least 1")),
    (["--set", "crop_size=[1, 2, 3]"], ("crop_size", "[1, 2, 3]")),
    (["--set", "flip=maybe"], ("flip", "'maybe'")),
    (["--set", "modle=fcn8s"], ("modle", "model")),  # the typo, and the known option it meant
    (["--backbone", "vgg19"], ("backbone", "'vgg19'", "vgg16")),
    (["--dataset-options", "{colour: red}"], ("synthetic", "colour", "num_images")),
    (["--class-weights", "median"], ("class_weights", "'median'", "median_frequency")),
    (["--dataset-options", "{class_map: {road: road}}"], ("class_map", "sky", "building")),  # the unmapped classes
])
def test_training_options_are_checked_with_one_line(tmp_path, capsys, argv, names):
    refused(capsys, ["train", *argv, "--out", tmp_path / "run", "--quiet"], *names)
    assert not (tmp_path / "run" / "last.pth").exists()


@pytest.mark.parametrize("argv", [
    ["eval", "x.pth", "--dataset", "synthetic", "--class-map", "{road:"],
    ["train", "--dataset-options", "{num_images: [1"],
])
def test_a_yaml_flag_that_does_not_parse_is_a_usage_error(capsys, argv):
    with pytest.raises(SystemExit) as exit_info:  # it was a traceback
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert all(name in err.splitlines()[-1] for name in (argv[-2], argv[-1], "YAML")), err  # the flag, its value


def test_the_cpu_model_line_names_family_and_model_where_the_name_is_bare(tmp_path):
    from fcnseg.runtime import cpu_model, usable_cores

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 23\nmodel\t\t: 49\n"
                       "model name\t: AMD EPYC\nflags\t\t: fpu avx2\n\nprocessor\t: 1\nmodel name\t: other\n")
    assert cpu_model(cpuinfo) == f"AMD EPYC (family 23, model 49), {usable_cores()} cores"
    assert cpu_model(tmp_path / "absent").endswith(f", {usable_cores()} cores")  # not Linux: what Python knows


@pytest.mark.parametrize("argv", [["serve"], ["serve", "camvid-fcn8s", "--port", "8001"], ["serve", "--port", "1"],
                                  ["serve", "-h"]])
def test_a_command_that_cannot_import_says_why_whatever_follows_it(monkeypatch, capsys, argv):
    # Its stand-in parser took no arguments: `fcnseg serve NET --port 8001` answered "unrecognized arguments"
    # and hid the reason (here a missing package).
    import importlib

    import_module = importlib.import_module

    def without_the_server(name, *args):
        if name == "fcnseg.commands.serve":
            raise ImportError("No module named 'uvicorn'")
        return import_module(name, *args)

    monkeypatch.setattr(importlib, "import_module", without_the_server)
    assert main(argv) == 2
    assert capsys.readouterr().err == ("fcnseg serve: error: this command cannot run here: No module named "
                                       "'uvicorn'\n")
    assert "(unavailable: No module named 'uvicorn')" in build_parser().format_help()
    assert build_parser().parse_args(["predict", "c.pth", "x.png", "--out", "o"]).command == "predict"  # the others
