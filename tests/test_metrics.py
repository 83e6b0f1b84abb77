import math

import numpy as np
import pytest
import torch
import torch.distributed as dist

from fcnseg.errors import DataError
from fcnseg.metrics import (
    BinaryCurve,
    ConfusionMatrix,
    confusion_matrix,
    format_per_class,
    format_table,
    scores_from_confusion,
)

from .helpers import error_names

nan = float("nan")

# Four classes: 0 and 1 in the ground truth, 2 absent everywhere that counts (it is predicted only on an
# ignored pixel), 3 predicted once on a class-0 pixel and once on an ignored pixel.
TARGET = torch.tensor([[0, 0, 0, 1],
                       [1, 1, 255, 0],
                       [255, 1, 0, 0]])
PRED = torch.tensor([[0, 0, 3, 1],
                     [1, 0, 2, 0],
                     [3, 1, 1, 0]])
# Ten valid pixels. GT 0: predicted 0 at (0,0) (0,1) (1,3) (2,3), 1 at (2,2), 3 at (0,2)  -> t_0 = 6.
#                   GT 1: predicted 1 at (0,3) (1,0) (2,1), 0 at (1,1)                  -> t_1 = 4.
MATRIX = torch.tensor([[4, 1, 0, 1],
                       [1, 3, 0, 0],
                       [0, 0, 0, 0],
                       [0, 0, 0, 0]])
# Column sums (predicted totals): 5, 4, 0, 1.
# IU_0 = 4 / (6 + 5 - 4) = 4/7, IU_1 = 3 / (4 + 4 - 3) = 3/5, IU_2 = 0/0 (nan), IU_3 = 0 / (0 + 1 - 0) = 0.
EXPECTED = {
    "pixel_acc": (4 + 3) / 10,
    "mean_acc": (4 / 6 + 3 / 4) / 2,
    "mean_iu": (4 / 7 + 3 / 5 + 0) / 3,
    "fw_iu": (6 * 4 / 7 + 4 * 3 / 5) / 10,
    "per_class_iou": [4 / 7, 3 / 5, nan, 0.0],
    "per_class_acc": [4 / 6, 3 / 4, nan, nan],
}


def assert_scores(actual: dict, expected: dict) -> None:
    assert set(actual) == set(expected)
    for key, value in expected.items():
        if isinstance(value, list):
            assert len(actual[key]) == len(value), key
            for a, e in zip(actual[key], value, strict=True):
                assert (math.isnan(a) and math.isnan(e)) or a == pytest.approx(e, abs=1e-12), key
        else:
            assert isinstance(actual[key], float), key
            assert actual[key] == pytest.approx(value, abs=1e-12), key


def test_confusion_matrix_by_hand_skips_ignored_pixels():
    matrix = confusion_matrix(PRED, TARGET, num_classes=4)
    assert matrix.dtype == torch.int64
    assert torch.equal(matrix, MATRIX)


def test_confusion_matrix_accepts_uint8_labels():
    # target * C would overflow in uint8 if it were not widened first.
    matrix = confusion_matrix(PRED.to(torch.uint8), TARGET.to(torch.uint8), num_classes=4)
    assert torch.equal(matrix, MATRIX)


def test_numpy_label_maps_are_counted_as_tensors_are():
    # What Segmenter.predict returns (numpy) gave an AttributeError ('numpy.ndarray' has no attribute 'is_complex').
    assert torch.equal(confusion_matrix(PRED.numpy(), TARGET.numpy().astype(np.uint8), num_classes=4), MATRIX)
    running = ConfusionMatrix(4)
    running.update(PRED.numpy(), TARGET.numpy())
    assert torch.equal(running.matrix, MATRIX)


def test_ignore_index_inside_class_range_is_skipped():
    # CamVid-style: 11 classes 0..10 plus void 11; here 2 classes plus void 2, and void 1 inside the range.
    target = torch.tensor([0, 1, 2, 1])
    pred = torch.tensor([0, 1, 0, 0])
    assert confusion_matrix(pred, target, 2, ignore_index=2).tolist() == [[1, 0], [1, 1]]
    assert confusion_matrix(pred, target.clamp(max=1), 2, ignore_index=1).tolist() == [[1, 0], [0, 0]]


def test_scores_by_hand():
    assert_scores(scores_from_confusion(MATRIX), EXPECTED)


def test_confusion_matrix_class_scores_end_to_end():
    metric = ConfusionMatrix(4)
    metric.update(PRED, TARGET)
    assert torch.equal(metric.matrix, MATRIX)
    assert int(metric.ignored) == 2
    assert_scores(metric.compute(), EXPECTED)


def test_all_zero_matrix_gives_nan_not_a_crash():
    scores = scores_from_confusion(torch.zeros(3, 3, dtype=torch.int64))
    for key in ("pixel_acc", "mean_acc", "mean_iu", "fw_iu"):
        assert math.isnan(scores[key])
    assert all(math.isnan(v) for v in scores["per_class_iou"] + scores["per_class_acc"])


def test_scores_refuse_non_square_matrix():
    with pytest.raises(ValueError) as caught:
        scores_from_confusion(torch.zeros(2, 3, dtype=torch.int64))
    error_names(caught, "square", "(2, 3)")


def test_logits_are_argmaxed_over_dim_1():
    # Noise in [0, 1) everywhere plus 2 on the channel of PRED: the argmax over channels is PRED.
    noise = torch.rand(1, 4, 3, 4, generator=torch.Generator().manual_seed(0))
    logits = noise + 2.0 * torch.nn.functional.one_hot(PRED, 4).permute(2, 0, 1).unsqueeze(0)
    metric = ConfusionMatrix(4)
    metric.update(logits, TARGET.unsqueeze(0))
    assert torch.equal(metric.matrix, MATRIX)


def test_logits_with_wrong_channel_count_are_refused():
    metric = ConfusionMatrix(5)
    with pytest.raises(ValueError) as caught:
        metric.update(torch.zeros(1, 4, 3, 4), TARGET.unsqueeze(0))
    error_names(caught, "4 channels", "num_classes", "5")


def test_accumulating_rows_equals_one_update():
    by_rows = ConfusionMatrix(4)
    for row in range(3):
        by_rows.update(PRED[row], TARGET[row])
    at_once = ConfusionMatrix(4)
    at_once.update(PRED, TARGET)
    assert torch.equal(by_rows.matrix, at_once.matrix)
    assert torch.equal(by_rows.matrix, MATRIX)
    assert int(by_rows.ignored) == int(at_once.ignored) == 2


def test_reset_clears_counts():
    metric = ConfusionMatrix(4)
    metric.update(PRED, TARGET)
    metric.reset()
    assert torch.equal(metric.matrix, torch.zeros(4, 4, dtype=torch.int64))
    assert int(metric.ignored) == 0


def test_bad_target_values_are_listed():
    target = torch.tensor([[0, 3], [7, 255], [1, 7]])
    pred = torch.zeros(3, 2, dtype=torch.int64)
    with pytest.raises(ValueError) as caught:
        confusion_matrix(pred, target, num_classes=2)
    error_names(caught, "label", "{3, 7}", "0..1", "255")  # each bad value once, the classes, the ignore index


def test_bad_pred_values_are_listed():
    target = torch.tensor([0, 1, 0])
    with pytest.raises(ValueError) as caught:
        confusion_matrix(torch.tensor([-1, 2, 0]), target, num_classes=2)
    error_names(caught, "predicted", "{-1, 2}", "0..1")


def test_float_pred_is_refused():
    with pytest.raises(ValueError, match="integer"):
        confusion_matrix(torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.int64), num_classes=2)


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError) as caught:
        confusion_matrix(torch.zeros(2, 3, dtype=torch.int64), torch.zeros(3, 2, dtype=torch.int64), 2)
    error_names(caught, "(2, 3)", "(3, 2)")


def test_binary_masks_saved_as_0_255_are_caught():
    metric = ConfusionMatrix(2)
    metric.update(torch.tensor([[0, 1], [1, 0]]), torch.tensor([[0, 255], [255, 0]]))
    with pytest.raises(DataError) as caught:
        metric.compute()
    error_names(caught, "0/255", "np.array(mask) > 127")  # the cause, and the fix
    three = ConfusionMatrix(3)  # any class count: all labelled pixels class 0, the rest ignored
    three.update(torch.tensor([0, 0]), torch.tensor([0, 255]))
    with pytest.raises(DataError, match="0/255"):
        three.compute()
    assert three.compute(strict=False)["pixel_acc"] == 1 / 1


def test_0_255_check_stays_quiet_otherwise():
    # Class 1 present, alongside ignored pixels: real void borders. Scores: matrix [[1, 0], [0, 1]].
    with_class_1 = ConfusionMatrix(2)
    with_class_1.update(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 255]))
    assert with_class_1.compute()["pixel_acc"] == 2 / 2
    # No class 1 and no ignored pixel: an all-background set, scored normally. Matrix [[1, 1], [0, 0]].
    background_only = ConfusionMatrix(2)
    background_only.update(torch.tensor([0, 1]), torch.tensor([0, 0]))
    assert background_only.compute()["mean_iu"] == pytest.approx((1 / 2 + 0 / 1) / 2)
    # Three classes, class 2 present beside ignored pixels: scored normally.
    three = ConfusionMatrix(3)
    three.update(torch.tensor([0, 2, 2]), torch.tensor([0, 2, 255]))
    assert three.compute()["pixel_acc"] == 2 / 2


def test_all_reduce_is_noop_without_process_group():
    metric = ConfusionMatrix(4)
    metric.update(PRED, TARGET)
    metric.all_reduce()
    assert torch.equal(metric.matrix, MATRIX)


def test_all_reduce_in_single_process_group_keeps_counts(free_port):
    metric = ConfusionMatrix(4)
    metric.update(PRED, TARGET)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port}", rank=0, world_size=1)
    try:
        metric.all_reduce()
    finally:
        dist.destroy_process_group()
    assert torch.equal(metric.matrix, MATRIX)
    assert metric.matrix.dtype == torch.int64
    assert int(metric.ignored) == 2
    # Still accumulates after the reduce.
    metric.update(PRED, TARGET)
    assert torch.equal(metric.matrix, 2 * MATRIX)


def test_format_table():
    results = {
        "FCN-32s": {"pixel_acc": 0.8941, "mean_acc": 0.7318, "mean_iu": 0.5937, "fw_iu": 0.8104},
        "FCN-8s": {"pixel_acc": 0.9034, "mean_acc": 0.7516, "mean_iu": 0.6218, "fw_iu": 0.8327},
    }
    assert format_table(results) == (
        "| net | pixel acc. | mean acc. | mean IU | f.w. IU |\n"
        "|---|---:|---:|---:|---:|\n"
        "| FCN-32s | 89.4 | 73.2 | 59.4 | 81.0 |\n"
        "| FCN-8s | 90.3 | 75.2 | 62.2 | 83.3 |"
    )


def test_format_table_refuses_incomplete_scores():
    with pytest.raises(ValueError) as caught:
        format_table({"net": {"pixel_acc": 0.5, "mean_acc": 0.5}})
    error_names(caught, "'net'", "'mean_iu', 'fw_iu'")  # the row, and the scores it lacks


def test_format_per_class():
    scores = scores_from_confusion(MATRIX)
    assert format_per_class(scores, ["a", "b", "c", "d"]) == (
        "| class | IoU | acc. |\n"
        "|---|---:|---:|\n"
        "| a | 57.1 | 66.7 |\n"  # 4/7, 4/6
        "| b | 60.0 | 75.0 |\n"  # 3/5, 3/4
        "| c | - | - |\n"
        "| d | 0.0 | - |"
    )
    with pytest.raises(ValueError) as caught:
        format_per_class(scores, ["a", "b", "c"])
    error_names(caught, "3", "4")  # the names given, the classes scored


def test_binary_curve_max_f_by_hand():
    from fcnseg.metrics import BinaryCurve

    # road (class 1) probabilities; 255 = ignored. Thresholds 0.9: TP 1 FP 0 -> P 1, R 1/3, F 0.5;
    # 0.6: TP 2 FP 1 -> P 2/3, R 2/3, F 2/3; 0.3: TP 3 FP 1 -> P 3/4, R 1, F 6/7 (the max); 0.1: TP 3 FP 2 -> F 0.75
    prob = torch.tensor([[[0.95, 0.65, 0.35, 0.62, 0.15, 0.99]]])
    truth = torch.tensor([[[1, 1, 1, 0, 0, 255]]])
    curve = BinaryCurve(positive=1, ignore_index=255, bins=10)
    curve.update(prob, truth)
    result = curve.compute()
    assert result["max_f"] == pytest.approx(6 / 7) and result["precision"] == pytest.approx(0.75)
    assert result["recall"] == 1.0 and result["threshold"] == pytest.approx(0.3)


def test_binary_curve_matches_brute_force():
    from fcnseg.metrics import BinaryCurve

    rng = np.random.default_rng(3)
    truth = rng.integers(0, 2, (2, 30, 40))
    prob = np.clip(truth * 0.35 + rng.random((2, 30, 40)) * 0.65, 0, 1)
    curve = BinaryCurve(positive=1, ignore_index=255, bins=100)
    curve.update(torch.from_numpy(prob), torch.from_numpy(truth))
    best = 0.0
    for t in np.arange(100) / 100:  # oracle: every bin edge as a threshold, counted directly
        chosen = np.floor(prob * 100) >= round(t * 100)
        tp, fp = (chosen & (truth == 1)).sum(), (chosen & (truth == 0)).sum()
        if tp:
            p, r = tp / (tp + fp), tp / (truth == 1).sum()
            best = max(best, 2 * p * r / (p + r))
    assert curve.compute()["max_f"] == pytest.approx(best, rel=1e-12)


def test_inputs_no_count_could_come_from_are_refused():
    """Found by a hostile review: a float target was truncated (1.9 counted as class 1), a negative count gave a
    pixel accuracy of 1.14, logits given as probabilities were clamped into a max-F, bins=0 failed in bincount."""
    with pytest.raises(ValueError, match="target must hold integer class indices"):
        confusion_matrix(torch.tensor([[1, 1, 2]]), torch.tensor([[1.9, 1.2, 2.7]]), 3)
    with pytest.raises(ValueError, match="pixel counts"):
        scores_from_confusion(torch.tensor([[5, -1], [0, 3]]))
    with pytest.raises(ValueError, match="bins"):
        BinaryCurve(1, 255, bins=0)
    curve = BinaryCurve(1, 255)
    for values in ([3.0, -2.0, 5.0], [0.5, float("nan"), 0.2]):
        with pytest.raises(ValueError, match=r"probabilities in \[0, 1\]"):
            curve.update(torch.tensor([values]), torch.tensor([[1, 0, 1]]))
    curve.update(torch.tensor([[0.9, 0.1, 1.0]]), torch.tensor([[1, 0, 255]]))  # probabilities: counted
    assert int(curve.counts.sum()) == 2
