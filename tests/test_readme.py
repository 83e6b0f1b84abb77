"""The README's commands, run as written.

Every command in the README's bash blocks is either run here (in a scratch folder holding what a fresh
clone has, plus a stand-in for `make demo`'s net) or listed in NOT_RUN with the reason, so a command added
to the README without a decision fails ``test_every_command_is_run_or_accounted_for``.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import fcnseg
from fcnseg.checkpoint import save_model
from fcnseg.data.info import CAMVID, SYNTHETIC_ROADS

from .helpers import random_fcn

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
BIN = Path(sys.executable).parent

NOT_RUN = {
    "make demo": "trains three nets for about 2 minutes; its parts are tests/test_cli.py's demo tests",
    "make test": "this suite",
    ".venv/bin/fcnseg train --config configs/camvid/fcn8s_il12_ema_w4_15k_b4_crop336_cutmix.yaml --root "
    "../shared/data/camvid":
        "the best CamVid recipe: about 2 CPU-hours (docs/camvid.md)",
    ".venv/bin/fcnseg serve camvid-fcn8s": "a server that runs until stopped: tests/test_serve.py",
    ".venv/bin/fcnseg eval camvid-fcn8s --dataset camvid --root ../shared/data/camvid --split val --out eval/camvid":
        "needs CamVid beside the clone: tests/test_shipped_net.py runs it where ../shared/data/camvid is",
    "make install": "the set-up itself (tests/test_cli.py and CI run the installed tool)",
}

# Training commands run in the README's order (later ones read runs/quick) and 20 iterations long: the
# number of steps is the one thing the test changes.
TRAINING = ".venv/bin/fcnseg train"


def readme_blocks(language: str) -> list[str]:
    """The README's fenced blocks of one language, in order."""
    return re.findall(rf"^```{language}\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def readme_commands() -> list[str]:
    """Every command of the README's bash blocks: continuation lines joined, comments dropped."""
    commands = []
    for block in readme_blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(shlex.join(words))
    return commands


def normalized(command: str) -> str:
    return shlex.join(shlex.split(command, comments=True))


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """A scratch folder with what the README's commands read on a fresh clone after `make demo`: the
    sample image, the configs, hubconf.py, and a small net on the synthetic classes where the demo's FCN-8s
    would be (the shipped net comes with the installed package)."""
    root = tmp_path_factory.mktemp("clone")
    (root / "docs" / "images").mkdir(parents=True)
    shutil.copy(REPO / "docs" / "images" / "street.png", root / "docs" / "images" / "street.png")
    shutil.copytree(REPO / "configs", root / "configs")
    shutil.copy(REPO / "hubconf.py", root / "hubconf.py")  # torch.hub.load(".", ...) reads it
    save_model(random_fcn(backbone="vgg16_bn"), SYNTHETIC_ROADS, root / "demo_out" / "fcn8s" / "last.pth")
    rng = np.random.default_rng(0)
    for folder in ("images", "masks"):
        (root / "my_data" / folder).mkdir(parents=True)
    for index in range(4):  # the user's own data for the fine-tuning command
        Image.fromarray(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)).save(root / f"my_data/images/{index}.png")
        Image.fromarray(rng.integers(0, 2, (64, 80), dtype=np.uint8)).save(root / f"my_data/masks/{index}.png")
    (root / "my_data" / "classes.txt").write_text("road\nnot_road\n")
    (root / "my_data" / "splits").mkdir()
    (root / "my_data" / "splits" / "train.txt").write_text("0\n1\n2\n")
    (root / "my_data" / "splits" / "val.txt").write_text("3\n")
    return root


def run(command: str, cwd: Path, *extra: str) -> subprocess.CompletedProcess:
    """Run one README command in ``cwd`` on one thread, with ``extra`` flags after it (a later flag wins)."""
    words = shlex.split(command)
    if words[0].startswith(".venv/bin/"):
        words[0] = str(BIN / words[0].removeprefix(".venv/bin/"))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(words + ["--threads", "1", *extra], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
    assert "Traceback" not in done.stderr
    return done


def test_every_command_is_run_or_accounted_for():
    commands = readme_commands()
    assert commands, "no bash blocks found in the README"
    unknown = [c for c in commands if not c.startswith(".venv/bin/fcnseg") and normalized(c) not in
               {normalized(k) for k in NOT_RUN}]
    assert not unknown, f"README commands neither run by this test nor listed in NOT_RUN: {unknown}"
    stale = [k for k in NOT_RUN if normalized(k) not in {normalized(c) for c in commands}]
    assert not stale, f"NOT_RUN names commands the README no longer has: {stale}"


def quick_start_commands() -> list[str]:
    """The commands of the README's quick start: the block after the set-up one."""
    block = {normalized(line) for line in readme_blocks("bash")[1].splitlines() if line.strip()}
    return [c for c in readme_commands() if c in block]


def fast_commands() -> list[str]:
    """The commands run by test_the_fast_commands_run_as_written: not the training ones, not those in NOT_RUN, and
    not the quick start's, which its own test runs and checks further."""
    skipped = {normalized(k) for k in [*NOT_RUN, *quick_start_commands()]}
    return [c for c in readme_commands() if normalized(c) not in skipped and not c.startswith(TRAINING)]


def test_the_fast_commands_run_as_written(clone):
    for command in fast_commands():
        run(command, clone)
    assert (clone / "predictions" / "street_overlay.png").is_file()
    assert (clone / "predictions" / "street_probs.npy").is_file()
    assert (clone / "eval" / "demo" / "metrics.json").is_file()
    assert (clone / "predictions-onnx" / "street_mask.png").is_file()


def test_the_quick_start_segments_the_sample_with_the_shipped_net(tmp_path, one_thread):
    commands = quick_start_commands()
    assert [c.split()[0] for c in commands] == ["make", ".venv/bin/fcnseg"] and "camvid-fcn8s" in commands[1]
    (tmp_path / "docs" / "images").mkdir(parents=True)
    shutil.copy(REPO / "docs" / "images" / "street.png", tmp_path / "docs" / "images" / "street.png")
    run(commands[1], tmp_path)
    mask = Image.open(tmp_path / "predictions" / "street_mask.png")
    assert mask.mode == "P" and mask.getpalette()[:3] == list(CAMVID.palette[0])  # CamVid's classes: sky first
    expected = fcnseg.load("camvid-fcn8s", device="cpu").predict(REPO / "docs" / "images" / "street.png")
    np.testing.assert_array_equal(np.asarray(mask), expected)
    assert (tmp_path / "predictions" / "street_overlay.png").is_file()
    assert (tmp_path / "predictions" / "street_side_by_side.png").is_file()


def test_the_python_quick_start_runs_as_written(clone, monkeypatch, capsys):
    monkeypatch.chdir(clone)
    for block in readme_blocks("python"):
        exec(compile(block, "README.md", "exec"), {})
    assert capsys.readouterr().out.strip()


def test_the_training_commands_run_as_written(clone):
    skipped = {normalized(k) for k in NOT_RUN}
    trained = [c for c in readme_commands() if c.startswith(TRAINING) and normalized(c) not in skipped]
    assert len(trained) >= 3
    for command in trained:
        run(command, clone, "--iterations", "20")
    assert (clone / "runs" / "quick" / "last.pth").is_file()
    assert (clone / "runs" / "mine" / "last.pth").is_file()


def test_every_relative_link_of_the_readme_and_docs_resolves():
    broken = []
    for page in [README, *sorted((REPO / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" not in target and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(REPO)}: {target}")
    assert not broken


def test_the_readme_stays_short():
    assert len(README.read_text().splitlines()) < 200


def docs_commands() -> list[tuple[str, list[str]]]:
    """(page, words after `fcnseg`) of each fcnseg command in the docs' and model cards' code blocks, and of each
    inline `.venv/bin/fcnseg ...`; commands holding a shell variable, a pipe or a placeholder left out."""
    pages = [*sorted((REPO / "docs").rglob("*.md")), *sorted((REPO / "src" / "fcnseg" / "pretrained").glob("*.md"))]
    found = []
    for page in pages:
        text = page.read_text()
        lines = [line for block in re.findall(r"^```\w*\n(.*?)^```", text, flags=re.S | re.M)
                 for line in block.replace("\\\n", " ").splitlines()]
        lines += re.findall(r"`(\.venv/bin/fcnseg [^`\n]+)`", text)
        for line in lines:
            command = re.match(r"^\s*(?:\w+=\S+ )*(?:\.venv/bin/|/usr/bin/time -v )?fcnseg ([a-z]+ .*)", line)
            if command is None:  # not a command, or an error line ("fcnseg train: error: ...") a page quotes
                continue
            words = shlex.split(command.group(1), comments=True)
            if not any("$" in w or w in ("...", "|", "&&", ";", ">", "&") or w.startswith("<") for w in words):
                found.append((str(page.relative_to(REPO)), words))
    return found


def test_the_docs_commands_name_options_and_values_fcnseg_has():
    # A renamed flag or choice leaves the docs' commands stale without failing anything else: each one is parsed
    # (not run) and must not be refused for an option or value fcnseg does not have.
    import contextlib
    import io

    from fcnseg.cli import build_parser

    parser = build_parser()
    commands, stale = docs_commands(), []
    for page, words in commands:
        said = io.StringIO()
        with contextlib.suppress(SystemExit), contextlib.redirect_stderr(said), \
                contextlib.redirect_stdout(io.StringIO()):
            parser.parse_args(words)
        if "unrecognized arguments" in said.getvalue() or "invalid" in said.getvalue():
            stale.append(f"{page}: fcnseg {shlex.join(words)}: {said.getvalue().strip().splitlines()[-1]}")
    assert len(commands) >= 20
    assert stale == []
