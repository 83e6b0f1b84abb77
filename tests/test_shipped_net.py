"""The net that ships inside fcnseg (camvid-fcn8s): reached by name through the API, torch.hub and init_from,
and scoring on CamVid val what its model card says (where the shared CamVid copy is on the machine).

tests/test_pretrained.py tests the mechanism on a tiny stand-in; this module tests the real file.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import fcnseg
from fcnseg import pretrained
from fcnseg.cli import main
from fcnseg.data.info import CAMVID

REPO = Path(__file__).resolve().parents[1]
NAME = "camvid-fcn8s"
CAMVID_ROOT = REPO.parent / "shared" / "data" / "camvid"
CARD = pretrained.FOLDER / "camvid-fcn8s.md"


def card_row(label: str) -> list[float]:
    """The numbers of the model card's table row ``| label | 92.7 | **67.5** | ...``."""
    match = re.search(rf"^\| {re.escape(label)} \|(.*)\|$", CARD.read_text(), flags=re.M)
    assert match, f"the model card has no row {label!r}"
    return [float(cell.strip(" *")) for cell in match.group(1).split("|")]


def test_the_shipped_file_is_the_one_recorded_and_small():
    path = pretrained.path_of(NAME)  # checks the SHA-256
    assert path.stat().st_size < 5_000_000
    assert pretrained.SHIPPED[NAME]["sha256"] in CARD.read_text()  # the card names the file it describes
    assert f"{path.stat().st_size:,}" in CARD.read_text()


def test_load_by_name_gives_camvids_fcn8s_at_an_eighth_of_the_width(one_thread):
    segmenter = fcnseg.load(NAME, device="cpu")
    spec = segmenter.spec
    assert (spec.name, spec.backbone, spec.width, spec.geometry) == ("fcn8s", "vgg16_bn", 0.125, "fast")
    assert segmenter.info.class_names == CAMVID.class_names and spec.num_classes == 11
    parameters = sum(p.numel() for p in segmenter.model.parameters())  # the loaded net's, from the file
    assert 2.0e6 < parameters < 2.2e6  # the card's 2.1 M
    labels = segmenter.predict(np.zeros((90, 120, 3), np.uint8))
    assert labels.shape == (90, 120) and labels.dtype.kind in "iu" and labels.max() < 11


def test_torch_hub_gives_the_same_net_as_load(one_thread):
    net = torch.hub.load(str(REPO), "camvid_fcn8s", source="local")
    reference = fcnseg.load(NAME, device="cpu")
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    state = {k: v for k, v in net.state_dict().items()}
    assert state.keys() == reference.model.state_dict().keys()
    # The segmenter may fold or re-lay its copy for inference: the same function, to float rounding.
    with torch.no_grad():
        torch.testing.assert_close(net(x), reference.model(x), rtol=1e-5, atol=1e-5)
    assert not net.training


def test_fine_tuning_from_the_name_takes_its_architecture_and_weights(tmp_path, one_thread):
    out = tmp_path / "run"
    argv = ["train", "--init-from", NAME, "--dataset", "synthetic", "--set", "dataset_options={num_images: 8}",
            "--iterations", "1", "--batch-size", "2", "--crop-size", "64", "64", "--val-interval", "1",
            "--threads", "1", "--out", str(out), "--quiet", "--set", "lr=1e-7"]
    assert main(argv) == 0
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["init_from"] == NAME  # the name is kept, so a resumed run finds it again
    assert (config["model"], config["backbone"], config["width"], config["geometry"]) == (
        "fcn8s", "vgg16_bn", 0.125, "fast")
    trained = torch.load(out / "last.pth", weights_only=True)["model_state_dict"]
    shipped = fcnseg.load(NAME, device="cpu").model.state_dict()
    # The score layers were replaced for the synthetic classes (surgery); the backbone started from the shipped net.
    assert trained["score_fr.weight"].shape[0] != shipped["score_fr.weight"].shape[0]
    first_conv = "backbone.features.0.weight"
    # one step at a learning rate of 1e-7 leaves the starting weights as they were, to 1e-5
    torch.testing.assert_close(trained[first_conv], shipped[first_conv], rtol=0, atol=1e-5)


@pytest.mark.slow
@pytest.mark.skipif(not (CAMVID_ROOT / "val.txt").is_file(), reason="the shared CamVid copy is not on this machine")
def test_val_mean_iu_is_the_model_cards(tmp_path):
    # The README's command (tests/test_readme.py lists it as run here), on one thread.
    argv = ["eval", NAME, "--dataset", "camvid", "--root", str(CAMVID_ROOT), "--split", "val", "--threads", "1",
            "--out", str(tmp_path / "eval"), "--quiet"]
    assert main(argv) == 0
    scores = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert scores["num_images"] == 101
    found = [round(100 * scores[key], 1) for key in ("pixel_acc", "mean_acc", "mean_iu", "fw_iu")]
    assert found == card_row("this file (float16 weights)")
    for name, values in scores["per_class"].items():
        assert [round(100 * values["iou"], 1), round(100 * values["acc"], 1)] == card_row(name), name
