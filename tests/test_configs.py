"""The shipped training configs (configs/) and the script that runs them: a typo there would otherwise show
only when a user starts a two-hour run."""

import json
import re
from pathlib import Path

import pytest

from fcnseg.cli import build_parser
from fcnseg.commands.train import config_from_args
from fcnseg.errors import ConfigError
from fcnseg.train.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))


def test_there_are_shipped_configs():
    assert len(CONFIGS) >= 10, CONFIGS


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: str(path.relative_to(REPO / "configs")))
def test_each_config_reads_and_writes_its_run_under_its_own_name(path):
    config = TrainConfig.from_yaml(path)  # names, types and ranges, as fcnseg train checks them
    # scripts/camvid.sh eval and docs/camvid.md find a config's run by the config's name.
    assert Path(config.out) == Path("runs") / path.parent.name / path.stem
    assert path.read_text().startswith("# "), "each config says in a comment what it is for"


def test_every_config_the_camvid_script_trains_exists():
    script = (REPO / "scripts" / "camvid.sh").read_text()
    best = re.search(r"^BEST=(\S+)", script, re.MULTILINE).group(1)
    named = set(re.findall(r"^\s*[\w-]+\) train (\w+)", script, re.MULTILINE)) | {best}  # case PART) train NAME
    named |= set(re.search(r"for stage in ([\w ]+);", script).group(1).split())
    missing = sorted(name for name in named if not (REPO / "configs" / "camvid" / f"{name}.yaml").is_file())
    assert not missing and len(named) >= 8, (missing, named)


def test_numbers_in_exponent_form_are_numbers_in_files_flags_and_set(tmp_path):
    """PyYAML alone reads ``lr: 1e-4`` as the string "1e-4" (YAML 1.1 wants 1.0e-4), and the option was
    refused as "expects a number"; a quoted value stays a string."""
    (tmp_path / "run.yaml").write_text("dataset: synthetic\nlr: 1e-4\nweight_decay: 5E-4\n")
    assert TrainConfig.from_yaml(tmp_path / "run.yaml").lr == 1e-4
    assert TrainConfig.from_yaml(tmp_path / "run.yaml").weight_decay == 5e-4
    args = build_parser().parse_args(["train", "--config", str(tmp_path / "run.yaml"), "--set", "lr=1e-7",
                                      "--dataset-options", "{num_images: 1e1}"])
    config = config_from_args(args)
    assert config.lr == 1e-7 and config.dataset_options == {"num_images": 10.0}
    (tmp_path / "quoted.yaml").write_text("dataset: synthetic\nlr: '1e-4'\n")
    with pytest.raises(ConfigError, match="expects a number"):
        TrainConfig.from_yaml(tmp_path / "quoted.yaml")


def test_dataset_options_on_the_command_line_are_merged_into_the_configs(tmp_path):
    """``--dataset-options '{num_images: 8}'`` over a config with ``{class_map: ..., height: 48}`` replaced the
    whole mapping: the run trained on the reader's own classes and sizes without a word."""
    (tmp_path / "run.yaml").write_text("dataset: synthetic\ndataset_options: {num_images: 100, height: 48}\n")
    for given in (["--dataset-options", "{num_images: 8}"], ["--set", "dataset_options={num_images: 8}"]):
        config = config_from_args(build_parser().parse_args(["train", "--config", str(tmp_path / "run.yaml"), *given]))
        assert config.dataset_options == {"num_images": 8, "height": 48}, given
    # The same over a run's own config.yaml when resuming.
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("dataset: synthetic\ndataset_options: {num_images: 100, width: 64}\n")
    config = config_from_args(build_parser().parse_args(["train", "--out", str(tmp_path / "run"), "--resume",
                                                         "--dataset-options", "{num_images: 8}"]))
    assert config.dataset_options == {"num_images": 8, "width": 64}
    # A list is replaced as before.
    (tmp_path / "run.yaml").write_text("dataset: synthetic\ncrop_size: [16, 16]\n")
    config = config_from_args(build_parser().parse_args(["train", "--config", str(tmp_path / "run.yaml"),
                                                         "--set", "crop_size=[8, 12]"]))
    assert config.crop_size == [8, 12]


@pytest.mark.parametrize("given", [["--threads", "0"], ["--set", "threads=0"], ["--set", "bogus=1"],
                                   ["--amp", "bogus"], ["--set", "optimizer=adam"]])
def test_a_bad_flag_is_reported_as_the_command_lines_not_the_config_files(tmp_path, given):
    """``--threads 0`` with ``--config run.yaml`` was reported as "run.yaml: threads must be ...", sending the
    user to a file that holds no such value."""
    (tmp_path / "run.yaml").write_text("dataset: synthetic\n")
    args = build_parser().parse_args(["train", "--config", str(tmp_path / "run.yaml"), *given])
    with pytest.raises(ConfigError, match=r"^command line: (threads must be|unknown option|amp must be one of "
                                          r"none|optimizer must be one of sgd)"):
        config_from_args(args)
    (tmp_path / "run.yaml").write_text("dataset: synthetic\nthreads: 0\n")  # the file's own value: the file
    with pytest.raises(ConfigError, match=r"run\.yaml: threads must be"):
        config_from_args(build_parser().parse_args(["train", "--config", str(tmp_path / "run.yaml")]))


def _ablation_rows() -> list[tuple[str, list[str]]]:
    """docs/camvid.md's ablation table: (the report under docs/camvid/ a row is, its four scores as printed)."""
    text = (REPO / "docs" / "camvid.md").read_text()
    table = text.split("## Ablation (val, last iteration)")[1].split("\n\n| run |")[1].split("\n\n")[0]
    best = re.search(r"^BEST=(\S+)", (REPO / "scripts" / "camvid.sh").read_text(), re.MULTILINE).group(1)
    rows, run = [], None
    for line in table.splitlines()[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        named = re.search(r"`(\w+)`", cells[0])
        if cells[0] == "before":
            report = run = "fcn8s"  # the staged recipe's last stage
        elif cells[0].startswith("its training weights"):
            report = f"{run}_train_weights"
        elif cells[0].startswith("best, "):  # the best net with test-time flips and scales
            report = f"{best}_tta"
        elif named:
            run = named.group(1)
            report = f"{run}_tta" if "+ the same" in cells[0] or "test-time flip" in cells[0] else run
        else:
            raise AssertionError(f"a row of the ablation table names no report: {line}")
        rows.append((report, [re.sub(r"\*", "", cell) for cell in cells[3:7]]))
    return rows


def test_the_camvid_ablation_table_prints_what_its_reports_hold():
    # The best net's test-time row kept the former best's 69.7 after the best moved (its report says 70.0).
    rows = _ablation_rows()
    assert len(rows) >= 25
    for report, printed in rows:
        metrics = json.loads((REPO / "docs" / "camvid" / report / "metrics.json").read_text())
        held = [f"{100 * metrics[key]:.1f}" for key in ("pixel_acc", "mean_acc", "mean_iu", "fw_iu")]
        assert printed == held, (report, printed, held)


def test_the_camvid_heldout_table_prints_what_its_reports_hold():
    # Each row: the run's report on the held-out drive (docs/camvid/heldout/RUN) and on val (RUN_val); a bf16
    # run of a config that also ran in float32 has its reports under RUN_bf16.
    text = (REPO / "docs" / "camvid.md").read_text()
    table = text.split("| run (16000 it.) | the one change |")[1].split("\n\n")[0]
    rows = 0
    for line in table.splitlines()[2:]:
        cells = [re.sub(r"\*", "", cell.strip()) for cell in line.strip("|").split("|")]
        run = re.match(r"`(\w+)`", cells[0]).group(1)
        if cells[0].endswith(", bf16") and (REPO / "docs" / "camvid" / "heldout" / f"{run}_bf16").is_dir():
            run = f"{run}_bf16"
        for report, printed in ((run, cells[3]), (f"{run}_val", cells[4])):
            metrics = json.loads((REPO / "docs" / "camvid" / "heldout" / report / "metrics.json").read_text())
            assert printed == f"{100 * metrics['mean_iu']:.1f}", (report, printed)
        rows += 1
    assert rows >= 12
