"""The shipped training configs (configs/) and the script that runs them: a typo there would otherwise show
only when a user starts a two-hour run."""

import re
from pathlib import Path

import pytest

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
