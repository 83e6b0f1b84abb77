import argparse
import datetime
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

from fcnseg.checkpoint import save_model
from fcnseg.commands.evaluate import add_parser, run
from fcnseg.data.info import VOC
from fcnseg.errors import ConfigError, DataError
from fcnseg.evaluate import ShardSampler, evaluate, read_report, write_report
from fcnseg.inference import InferenceOptions
from fcnseg.metrics import ConfusionMatrix, scores_from_confusion
from fcnseg.models import build_model
from fcnseg.viz import confusion_figure

C = 3


@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    pass


IGNORE = 255

# Two images of different sizes. The image's channel 0 holds the class the forward below predicts, so
# predictions are known exactly; the labels are the ground truth.
PREDS = [torch.tensor([[0, 0, 1],
                       [1, 1, 2]]),
         torch.tensor([[2, 2],
                       [0, 1],
                       [1, 1]])]
LABELS = [torch.tensor([[0, 1, 1],
                        [1, IGNORE, 2]]),
          torch.tensor([[2, 0],
                        [0, 1],
                        [IGNORE, 1]])]
# gt 0: predicted 0 twice ((0,0) of A, (1,0) of B), 2 once ((0,1) of B)           -> t_0 = 3
# gt 1: predicted 0 once ((0,1) of A), 1 four times                             -> t_1 = 5
# gt 2: predicted 2 twice                                                       -> t_2 = 2
# The two ignored pixels (predicted 1 and 1) do not count.
MATRIX = [[2, 0, 1],
          [1, 4, 0],
          [0, 0, 2]]
# Column sums (predicted totals): 3, 4, 3.
EXPECTED = {
    "pixel_acc": (2 + 4 + 2) / 10,
    "mean_acc": (2 / 3 + 4 / 5 + 2 / 2) / 3,
    "mean_iu": (2 / (3 + 3 - 2) + 4 / (5 + 4 - 4) + 2 / (2 + 3 - 2)) / 3,
    "fw_iu": (3 * 2 / 4 + 5 * 4 / 5 + 2 * 2 / 3) / 10,
}


class KnownDataset(Dataset):
    """Images whose channel 0 is the label the ``oracle`` forward will predict."""

    def __init__(self, preds, labels) -> None:
        self.preds, self.labels = preds, labels

    def __len__(self) -> int:
        return len(self.preds)

    def __getitem__(self, index):
        pred = self.preds[index].float()
        return torch.stack([pred, torch.zeros_like(pred), torch.ones_like(pred)]), self.labels[index]


def oracle(x: torch.Tensor) -> torch.Tensor:
    """Logits that are 10 for the class written in channel 0 (padding, 0, predicts class 0)."""
    return F.one_hot(x[:, 0].round().long(), C).permute(0, 3, 1, 2).float() * 10


def test_scores_by_hand_over_the_whole_dataset():
    scores = evaluate(oracle, KnownDataset(PREDS, LABELS), C, IGNORE, progress=False)
    assert scores["confusion"] == MATRIX  # ignored pixels are not counted
    assert scores["num_images"] == 2
    for key, value in EXPECTED.items():
        assert scores[key] == pytest.approx(value, abs=1e-12), key
    # Counts are pooled over the dataset, not scores averaged over images.
    per_image = [evaluate(oracle, KnownDataset([p], [t]), C, IGNORE, progress=False)["mean_iu"]
                 for p, t in zip(PREDS, LABELS, strict=True)]
    assert scores["mean_iu"] != pytest.approx(sum(per_image) / 2)


def test_a_dataset_normalised_otherwise_than_the_net_expects_is_refused():
    # evaluate(net, dataset normalised "caffe") scored a net trained on "imagenet" inputs: 36.8 mean IU fell to 9.4
    # without a word (only the CLI builds the dataset with the net's normalisation).
    from torch.utils.data import Subset

    from fcnseg.api import Segmenter
    from fcnseg.data.info import SYNTHETIC_ROADS
    from fcnseg.data.synthetic import SyntheticRoads

    from .helpers import random_fcn

    net = random_fcn(num_classes=8, normalization="imagenet")
    # Also through a Segmenter's scores (what fcnseg eval passes; an export's too): the check looked at modules
    # only, and seg.scores scored the caffe-normalised images without a word (0.540 mean IU for 0.883).
    spec = net.spec.with_classes(SYNTHETIC_ROADS)
    export_like = Segmenter(None, spec, device="cpu", forward=net)
    for forward in (net, Segmenter(net, spec, device="cpu").scores, export_like.scores):
        for dataset in (SyntheticRoads(2, "val", 40, 48, normalization="caffe"),
                        Subset(SyntheticRoads(2, "val", 40, 48, normalization="caffe"), [0])):
            with pytest.raises(ConfigError, match="normalises its images as 'caffe', but the net expects 'imagenet'"):
                evaluate(forward, dataset, 8, 255, progress=False)
        assert evaluate(forward, SyntheticRoads(1, "val", 40, 48), 8, 255, progress=False)["num_images"] == 1


def test_scores_of_another_number_of_classes_are_refused_naming_both():
    # A net of 4 classes scored as 3 was blamed on its predictions ("predicted values {3} are not classes 0..2");
    # as 5, it was scored without a word.
    from .helpers import error_names  # here, not above: rank 1 of the distributed test loads this file alone

    four = lambda x: torch.zeros(x.shape[0], 4, *x.shape[2:])  # noqa: E731
    dataset = KnownDataset(PREDS, LABELS)
    for classes in (3, 5):
        with pytest.raises(ConfigError) as caught:
            evaluate(four, dataset, classes, IGNORE, progress=False)
        error_names(caught, f"{classes} classes", "(1, 4, ")


def test_batches_of_different_sizes_score_like_single_images():
    dataset = KnownDataset(PREDS * 3, LABELS * 3)
    one = evaluate(oracle, dataset, C, IGNORE, progress=False)
    padded = evaluate(oracle, dataset, C, IGNORE, InferenceOptions(batch_size=2), progress=False)
    assert padded["confusion"] == one["confusion"] == [[3 * v for v in row] for row in MATRIX]
    slide = evaluate(oracle, dataset, C, IGNORE, InferenceOptions(batch_size=4, mode="slide", window=(2, 2),
                                                                  flip=True), progress=False)
    assert slide["confusion"] == one["confusion"]


def test_a_model_is_evaluated_in_eval_mode_and_given_back_in_its_mode():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, C, 1), nn.Dropout(0.9))  # dropout would change predictions in train mode
    dataset = KnownDataset(PREDS, LABELS)
    expected = ConfusionMatrix(C, IGNORE)
    with torch.no_grad():
        for image, label in dataset:
            expected.update(model.eval()(image[None]), label[None])
    model.train()
    scores = evaluate(model, dataset, C, IGNORE, progress=False)
    assert scores["confusion"] == expected.matrix.tolist()
    assert model.training


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_shard_sampler_covers_every_index_exactly_once(world_size):
    for length in range(0, 11):
        shards = [list(ShardSampler(length, rank, world_size)) for rank in range(world_size)]
        assert sorted(i for shard in shards for i in shard) == list(range(length))
        assert [len(ShardSampler(length, rank, world_size)) for rank in range(world_size)] == \
            [len(shard) for shard in shards]
        assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_shard_sampler_refuses_bad_ranks():
    with pytest.raises(ValueError, match="rank"):
        ShardSampler(5, 2, 2)


def test_distributed_without_process_group_is_refused():
    with pytest.raises(ConfigError, match="torch.distributed"):
        evaluate(oracle, KnownDataset(PREDS, LABELS), C, IGNORE, progress=False, distributed=True)


# Rank 1 runs in a separate process; it loads this file for the dataset and the oracle forward.
RANK_1 = """
import datetime, importlib.util, json, sys
import torch.distributed as dist
from fcnseg.evaluate import evaluate

test_file, port, out = sys.argv[1], sys.argv[2], sys.argv[3]
spec = importlib.util.spec_from_file_location("evaluate_tests", test_file)
tests = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tests)
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=1, world_size=2,
                        timeout=datetime.timedelta(seconds=60))
scores = evaluate(tests.oracle, tests.five_images(), tests.C, tests.IGNORE, progress=False, distributed=True)
json.dump(scores, open(out, "w"))
dist.destroy_process_group()
"""


def five_images() -> KnownDataset:
    return KnownDataset(PREDS * 2 + PREDS[:1], LABELS * 2 + LABELS[:1])


def test_distributed_counts_every_image_once(tmp_path, free_port):
    # Five images over two ranks: a sampler that pads shards would score one image twice.
    script = tmp_path / "rank1.py"
    script.write_text(RANK_1)
    port = str(free_port)
    other = subprocess.Popen([sys.executable, str(script), __file__, port, str(tmp_path / "rank1.json")],
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=2,
                                timeout=datetime.timedelta(seconds=60))
        try:
            scores = evaluate(oracle, five_images(), C, IGNORE, progress=False, distributed=True)
        finally:
            dist.destroy_process_group()
        assert other.wait(timeout=60) == 0
    finally:
        other.kill()
    single = evaluate(oracle, five_images(), C, IGNORE, progress=False)
    for result in (scores, json.loads((tmp_path / "rank1.json").read_text())):
        assert result["num_images"] == 5
        assert result["confusion"] == single["confusion"]


def test_write_report_writes_metrics_and_figure(tmp_path):
    scores = evaluate(oracle, KnownDataset(PREDS, LABELS), C, IGNORE, progress=False)
    names = ["sky", "road", "car"]
    text = write_report(scores, names, tmp_path / "out", "FCN-8s")
    assert "| FCN-8s | 80.0 |" in text and "| road |" in text
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["confusion"] == MATRIX
    assert metrics["mean_iu"] == pytest.approx(EXPECTED["mean_iu"])
    assert metrics["per_class"]["road"] == {"iou": pytest.approx(0.8), "acc": pytest.approx(0.8)}
    with Image.open(tmp_path / "out" / "confusion.png") as picture:
        assert picture.format == "PNG" and picture.width > 3 * 20
    assert not list((tmp_path / "out").glob(".*.tmp"))  # atomic writes leave no temporary files


def test_undefined_scores_become_null_in_json(tmp_path):
    # Class c never appears: its accuracy and IoU are undefined (nan), which JSON cannot hold.
    matrix = [[2, 1, 0], [0, 3, 0], [0, 0, 0]]
    scores = {**scores_from_confusion(torch.tensor(matrix)), "confusion": matrix}
    write_report(scores, ["a", "b", "c"], tmp_path, "net")
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["per_class"]["c"] == {"iou": None, "acc": None}
    assert metrics["per_class"]["b"] == {"iou": pytest.approx(3 / 4), "acc": 1.0}
    report = read_report(tmp_path)  # read back: undefined is nan again, the rest as written
    assert np.isnan(report["per_class"]["c"]["iou"]) and np.isnan(report["per_class"]["c"]["acc"])
    assert report["per_class"]["b"]["iou"] == pytest.approx(3 / 4) and report["mean_iu"] == pytest.approx(
        np.nanmean([2 / 3, 3 / 4]))


@pytest.mark.parametrize("text", ["", "{", '{"title": "net"}', '{"pixel_acc": 1, "mean_acc": 1, "mean_iu": "x", '
                                  '"fw_iu": 1, "per_class": {}}', "[1, 2]"])
def test_read_report_refuses_what_eval_did_not_write_in_one_line(tmp_path, text):
    (tmp_path / "metrics.json").write_text(text)
    with pytest.raises(ConfigError, match="metrics.json is not a report of fcnseg eval .*`fcnseg eval --out`"):
        read_report(tmp_path)
    with pytest.raises(ConfigError, match="No such file or directory"):
        read_report(tmp_path / "absent")


def _shade_count(path, colour) -> int:
    array = np.asarray(Image.open(path).convert("RGB"))
    return int((array == np.asarray(colour, dtype=np.uint8)).all(axis=2).sum())


def test_confusion_figure_shades_by_row_fraction(tmp_path):
    full = (8, 48, 107)  # the shade of a cell holding all of its row's pixels
    confusion_figure([[7, 0], [0, 0]], ["a", "b"], tmp_path / "full.png")
    confusion_figure([[1, 1], [3, 3]], ["a", "b"], tmp_path / "half.png")
    assert _shade_count(tmp_path / "full.png", full) > 100
    assert _shade_count(tmp_path / "full.png", (220, 220, 220)) > 100  # class b absent from the ground truth
    assert _shade_count(tmp_path / "half.png", full) == 0
    big = confusion_figure(np.eye(21, dtype=np.int64), VOC.class_names, tmp_path / "voc.png")
    with Image.open(big) as picture:
        assert picture.width > 21 * 20 and picture.height > 21 * 20
    with pytest.raises(ValueError, match="class names"):
        confusion_figure([[1, 0], [0, 1]], ["a"], tmp_path / "bad.png")


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    return run(parser.parse_args(argv))


def test_cli_scores_a_checkpoint_on_synthetic_roads(tiny_checkpoint, tmp_path, capsys):
    checkpoint = tiny_checkpoint
    out = tmp_path / "eval"
    code = _cli(["eval", str(checkpoint), "--dataset", "synthetic", "--split", "val", "--limit", "3",
                 "--workers", "0", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "synthetic val: 3 images" in printed
    assert "| fcn8s (vgg16) |" in printed and "| lane_marking |" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_images"] == 3
    assert sum(map(sum, metrics["confusion"])) == 3 * 128 * 160  # synthetic labels have no ignored pixels
    assert (out / "confusion.png").is_file()
    # What was scored and how: a report left by an earlier run (one since interrupted) looked like this one's.
    evaluated = metrics["evaluated"]
    assert evaluated["checkpoint"] == str(checkpoint.resolve()) and evaluated["limit"] == 3
    assert (evaluated["dataset"], evaluated["split"], evaluated["root"]) == ("synthetic", "val", None)
    assert evaluated["inference"]["mode"] == "whole" and evaluated["inference"]["scales"] == [1.0]
    assert evaluated["max_memory"] is None and evaluated["accept_only_class_zero"] is False
    written = datetime.datetime.fromisoformat(evaluated["at"])
    assert abs((datetime.datetime.now(datetime.UTC) - written).total_seconds()) < 600
    assert read_report(out)["num_images"] == 3


def test_cli_refuses_a_dataset_with_other_classes(tmp_path):
    from .helpers import error_names  # here, not above: rank 1 of the distributed test loads this file alone

    model = build_model("fcn32s", backbone="vgg16", num_classes=21, width=1 / 16, geometry="fast")
    checkpoint = save_model(model, VOC, tmp_path / "voc.pth")
    with pytest.raises(DataError) as caught:
        _cli(["eval", str(checkpoint), "--dataset", "synthetic", "--limit", "1", "--workers", "0"])
    error_names(caught, checkpoint, "21", "synthetic", "8")  # the net, its classes, the dataset and its classes
    with pytest.raises(ConfigError, match="--root"):
        _cli(["eval", str(checkpoint), "--dataset", "voc"])


def test_cli_eval_under_torchrun_equals_one_process(tiny_checkpoint, tmp_path, free_port):
    port = free_port
    args = ["-m", "fcnseg.cli", "eval", str(tiny_checkpoint), "--dataset", "synthetic", "--limit", "5",
            "--workers", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, *args, "--out", str(tmp_path / "one")], env=env, capture_output=True,
                         text=True)
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                          "127.0.0.1", "--master_port", str(port), *args, "--out", str(tmp_path / "two")],
                         env=env, capture_output=True, text=True)
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr
    results = [json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("one", "two")]
    assert results[0]["confusion"] == results[1]["confusion"]
    assert sum(map(sum, results[0]["confusion"])) == 5 * 128 * 160  # every pixel of 5 images, once


def test_scoring_the_road_probability_leaves_the_labels_as_they_are():
    from fcnseg.data.registry import build_dataset
    from fcnseg.evaluate import evaluate

    from .helpers import random_fcn

    torch.set_num_threads(1)
    model = random_fcn("fcn8s", num_classes=2, width=1 / 16)
    data = build_dataset("synthetic", None, "val", num_images=3, height=48, width=64,
                         class_map={"*": "not road", "road": "road"})
    plain = evaluate(model, data, 2, data.info.ignore_index, device="cpu", progress=False)
    scored = evaluate(model, data, 2, data.info.ignore_index, device="cpu", progress=False, positive_class=1)
    assert scored["confusion"] == plain["confusion"] and "binary" not in plain
    assert scored["binary"]["class"] == 1 and 0 < scored["binary"]["max_f"] <= 1


def test_eval_limit_on_a_dataset_of_files(tmp_path, capsys):
    # --limit below the split's size wraps the files in a Subset; eval once read .info from it (traceback).
    from fcnseg.cli import main
    from fcnseg.data.registry import build_dataset

    from .helpers import folder_dataset

    data = build_dataset("folder", folder_dataset(tmp_path / "data"), None)
    save_model(build_model("fcn8s", backbone="vgg16", num_classes=8, width=1 / 16, geometry="fast"), data.info,
               tmp_path / "net.pth")
    common = ["eval", str(tmp_path / "net.pth"), "--dataset", "folder", "--root", str(tmp_path / "data"),
              "--split", "all", "--threads", "1"]
    assert main([*common, "--limit", "1"]) == 0
    assert "folder all: 1 images" in capsys.readouterr().out


def test_a_net_scored_on_a_dataset_of_other_class_names_is_warned_about(tmp_path, capsys):
    # Scored by index, a camvid net on a folder dataset of 11 other classes gave numbers without a word.
    from fcnseg.cli import main

    from .helpers import folder_dataset

    root = folder_dataset(tmp_path / "data", classes=11)
    argv = ["eval", "camvid-fcn8s", "--dataset", "folder", "--root", str(root), "--split", "all", "--threads", "1",
            "--quiet"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "the net's classes are not named as dataset folder's (11 differ: sky / class0, building / class1" in err
    (root / "classes.txt").write_text("Sky\nbuilding\npole\nroad\npavement\ntree\nsignsymbol\nfence\ncar\n"
                                      "pedestrian\nbicyclist\n")  # CamVid's, one in another case: the same names
    assert main(argv) == 0
    assert "not named" not in capsys.readouterr().err


class _MixedSizes(Dataset):
    """Images of several sizes (and one size twice), labels of every class."""

    SIZES = [(40, 48), (24, 56), (41, 47), (40, 48), (16, 16), (33, 29)]

    def __len__(self):
        return len(self.SIZES)

    def __getitem__(self, index):
        generator = torch.Generator().manual_seed(index)
        height, width = self.SIZES[index]
        return torch.randn(3, height, width, generator=generator), torch.randint(0, 8, (height, width),
                                                                                generator=generator)


def test_any_batch_size_scores_as_one_image_at_a_time():
    """Batches of mixed sizes were padded, and the net saw the padding near each border: eval --batch-size 4 of
    8 images scored 1140 pixels otherwise than --batch-size 1 (found by a hostile review)."""
    from .helpers import random_fcn

    model = random_fcn("fcn8s", num_classes=8, width=1 / 16).eval()
    one, four = (evaluate(model, _MixedSizes(), 8, IGNORE, InferenceOptions(batch_size=size), progress=False)
                 for size in (1, 4))
    assert one["confusion"] == four["confusion"] and one["num_images"] == four["num_images"] == 6


def test_scores_that_are_not_finite_are_refused_not_scored_as_class_0():
    """A net whose scores overflowed (finite weights, NaN logits) was scored and drawn as class 0 everywhere."""
    from fcnseg.errors import WeightsError

    def overflowed(x):
        return torch.full((x.shape[0], 8, *x.shape[2:]), float("nan"))

    with pytest.raises(WeightsError, match="NaN or infinite"):
        evaluate(overflowed, _MixedSizes(), 8, IGNORE, progress=False)


def test_evaluate_and_export_leave_a_nets_modes_as_they_were(tmp_path):
    # evaluate(net) and export_torchscript(net) put a net back with .train(was_training): a submodule its caller
    # kept in eval mode (a frozen BatchNorm, say) came back in training mode.
    from fcnseg.data.synthetic import SyntheticRoads
    from fcnseg.export import export_torchscript

    from .helpers import random_fcn

    net = random_fcn(num_classes=8)
    net.train()
    kept = next(m for m in net.modules() if isinstance(m, nn.Dropout | nn.Dropout2d))
    kept.eval()
    modes = [m.training for m in net.modules()]
    evaluate(net, SyntheticRoads(1, "val", 40, 48), 8, 255, progress=False)
    assert [m.training for m in net.modules()] == modes
    from fcnseg.data.info import SYNTHETIC_ROADS

    export_torchscript(net, tmp_path / "net.pt", info=SYNTHETIC_ROADS)
    assert [m.training for m in net.modules()] == modes and not kept.training
