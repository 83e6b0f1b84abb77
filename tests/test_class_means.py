"""scripts/class_means.py, and the per-class comparisons and curve gaps docs/camvid.md states in its prose:
each is recomputed here from the committed reports (or the doc's own curve table), so a figure in a sentence
cannot drift from what it summarises."""

import json
import re
import statistics

import pytest

from .helpers import REPO, load_script

HELDOUT = REPO / "docs" / "camvid" / "heldout"
KEPT = "fcn8s_il12_ema_w4_15k_b4_crop336_cutmix"
KEPT_SEEDS = [KEPT, f"{KEPT}_s1", f"{KEPT}_s2", f"{KEPT}_s3"]
CAMVID_CLASSES = ("sky", "building", "pole", "road", "pavement", "tree", "sign symbol", "fence", "car",
                  "pedestrian", "bicyclist")
DOC = " ".join((REPO / "docs" / "camvid.md").read_text().split())  # the prose with its line breaks undone


@pytest.fixture(scope="module")
def means():
    return load_script(REPO / "scripts" / "class_means.py")


def write_report(folder, mean_iu, ious):
    folder.mkdir()
    per_class = {name: {"iou": iou, "acc": 0.5} for name, iou in ious.items()}
    scores = {"pixel_acc": 0.9, "mean_acc": 0.6, "mean_iu": mean_iu, "fw_iu": 0.8}  # as fcnseg eval writes them
    (folder / "metrics.json").write_text(json.dumps({**scores, "per_class": per_class}))
    return folder


def test_the_means_are_plain_means_per_class_and_the_losses_come_first(means, tmp_path, capsys):
    a = write_report(tmp_path / "a", 0.5, {"road": 0.9, "car": 0.1})
    b = write_report(tmp_path / "b", 0.3, {"road": 0.7, "car": 0.3})
    c = write_report(tmp_path / "c", 0.45, {"road": 0.6, "car": 0.3})
    assert means.mean_scores([a, b]) == pytest.approx({"road": 80.0, "car": 20.0, "mean IU": 40.0})
    assert means.main([str(a), str(b), "--against", str(c)]) == 0
    # road 80 against 60 gains, car 20 against 30 loses: the loss is listed first, the mean IU last.
    assert capsys.readouterr().out.splitlines()[1:] == ["car 20.0 / 30.0 (-10.0)", "road 80.0 / 60.0 (+20.0)",
                                                        "mean IU 40.0 / 45.0 (-5.0)"]


def test_reports_of_other_classes_or_no_report_are_refused_in_one_line(means, tmp_path, capsys):
    a = write_report(tmp_path / "a", 0.5, {"road": 0.9, "car": 0.1})
    b = write_report(tmp_path / "b", 0.5, {"road": 0.9, "tree": 0.1})
    assert means.main([str(a), str(b), "--against", str(a)]) == 2
    message = f"class_means: error: {b} scores other classes than {a}; give reports of one dataset\n"
    assert capsys.readouterr().err == message
    assert means.main([str(a), "--against", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"class_means: error: {tmp_path / 'metrics.json'} is not a report of fcnseg eval (")
    assert error.count("\n") == 1


def test_a_class_a_report_leaves_undefined_is_shown_as_such_not_refused(means, tmp_path, capsys):
    # fcnseg eval writes null for the IoU of a class absent from the frames it scored.
    a = write_report(tmp_path / "a", 0.5, {"road": 0.9, "car": None, "sky": 0.2})
    b = write_report(tmp_path / "b", 0.4, {"road": 0.6, "car": 0.3, "sky": 0.5})
    assert means.main([str(a), "--against", str(b)]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == ["sky 20.0 / 50.0 (-30.0)", "road 90.0 / 60.0 (+30.0)",
                                                        "car - / 30.0 (-)", "mean IU 50.0 / 40.0 (+10.0)"]


def test_a_metrics_file_of_another_shape_is_refused_in_one_line(means, tmp_path, capsys):
    folder = tmp_path / "odd"
    folder.mkdir()
    (folder / "metrics.json").write_text('{"mean_iu": 0.5, "per_class": [0.5]}')
    assert means.main([str(folder), "--against", str(folder)]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"class_means: error: {folder / 'metrics.json'} is not a report of fcnseg eval (")
    assert error.count("\n") == 1


def stated_pairs(bullet_start: str, lead: str) -> dict[str, tuple[str, str]]:
    """The ``class a / b`` pairs of the sentence that follows ``lead`` in the bullet starting ``bullet_start``."""
    bullet = DOC.split(f"* {bullet_start}", 1)[1].split(" * **", 1)[0]
    sentence = re.split(r"\.(?:\s|$)", bullet.split(lead, 1)[1], maxsplit=1)[0]
    pairs = {name.replace(" ", ""): match.groups() for name in CAMVID_CLASSES
             for match in re.finditer(rf"\b{name} (\d+\.\d) / (\d+\.\d)", sentence)}
    assert pairs, (bullet_start, lead, sentence)
    return pairs


# (the bullet, the words before its comparison, the candidate's reports, the reports it is set against)
CLAIMS = [
    ("**Rescaling over [0.5, 2.0]**", "the two seeds' mean against the kept recipe's four:",
     [f"{KEPT}_scale05to2_s0", f"{KEPT}_scale05to2_s1"], KEPT_SEEDS),
    ("**ResNet-50 at 1/2 width**", "the two seeds' mean against the kept recipe's four:",
     ["fcn8s_il12_ema_r50w2_15k_b4_crop336_cutmix_s0", "fcn8s_il12_ema_r50w2_15k_b4_crop336_cutmix_s1"], KEPT_SEEDS),
    ("**ResNet-50 at 1/2 width**", "On val it gains",
     ["fcn8s_il12_ema_r50w2_15k_b4_crop336_cutmix_s0_val", "fcn8s_il12_ema_r50w2_15k_b4_crop336_cutmix_s1_val"],
     [f"{run}_val" for run in KEPT_SEEDS]),
    ("**A fourth seed of the kept recipe**", "Per class against seed 0:", [f"{KEPT}_s3"], [KEPT]),
    ("**A third seed of the kept recipe**", "Per class against seed 0:", [f"{KEPT}_s2"], [KEPT]),
    ("**A second seed of the baseline**", "Per class against seed 0:", ["fcn8s_il12_ema_w8_16k_s1"],
     ["fcn8s_il12_ema_w8_16k"]),
]


@pytest.mark.parametrize(("bullet", "lead", "candidate", "against"), CLAIMS)
def test_each_per_class_comparison_in_the_docs_is_what_the_reports_average_to(means, bullet, lead, candidate,
                                                                             against):
    ours, theirs = (means.mean_scores([HELDOUT / run for run in runs]) for runs in (candidate, against))
    for name, printed in stated_pairs(bullet, lead).items():
        assert printed == (f"{ours[name]:.1f}", f"{theirs[name]:.1f}"), (bullet, name)


def curve(label: str) -> list[float | None]:
    """The held-out curve table's row ``label``: mean IU at 1000, 2000, ... iterations (None where empty)."""
    row = DOC.split(f"| {label} |", 1)[1].split(" | |", 1)[0]
    cells = [cell.strip() for cell in row.split("|")][:16]
    return [float(cell) if cell else None for cell in cells]


def test_the_curve_gaps_the_docs_state_are_the_curve_tables(means):
    kept = [curve(label) for label in ("the same, 15000 it., bf16", "the same, seed 2 (AMD EPYC Zen 4, two threads)",
                                       "the same, seed 3 (AMD EPYC Zen 4, two threads)")]
    rescaled = [curve("the same with rescaling over [0.5, 2.0], seed 0 (AMD EPYC Zen 4, one thread)"),
                curve("the same with rescaling over [0.5, 2.0], seed 1")]
    resnet = [curve("the same on ResNet-50 at 1/2 width, seed 0 (AMD EPYC Zen 4, one thread)"),
              curve("the same on ResNet-50 at 1/2 width, seed 1")]

    def at(rows, thousands):
        return statistics.mean(row[thousands - 1] for row in rows)

    gaps = {k: f"{at(kept, k) - at(rescaled, k):.1f}" for k in (1, 10, 15)}
    assert "(by 0.5 at 1000 iterations, 1.6 at 10000, 0.6 at 15000)" in DOC
    assert gaps == {1: "0.5", 10: "1.6", 15: "0.6"}
    assert all(at(kept, k) > at(rescaled, k) for k in range(1, 16))  # "trails ... at every validation"
    assert "(43.75 against 44.93 at 11000, 43.7 against 44.9 at 15000)" in DOC
    assert (f"{at(resnet, 11):.2f}", f"{at(kept, 11):.2f}") == ("43.75", "44.93")
    assert (f"{at(resnet, 15):.1f}", f"{at(kept, 15):.1f}") == ("43.7", "44.9")
    assert all(at(kept, k) > at(resnet, k) for k in range(2, 16))  # "at every validation from 2000 iterations on"


def mean_iu(means, run: str) -> float:
    """The mean IU (percent) of the committed report docs/camvid/heldout/``run``, as class_means.py reads it."""
    return means.report_scores(HELDOUT / run)[means.MEAN_IU]


def test_the_test_time_comparison_of_both_recipes_prints_what_its_reports_hold(means):
    bullet = DOC.split("* **Both recipes at test time**", 1)[1].split(" * **", 1)[0]
    runs = ["fcn8s_il12_ema_w8_16k_s1", f"{KEPT}_s2", f"{KEPT}_s3"]
    one_scale, tta = ([mean_iu(means, f"{run}{suffix}") for run in runs] for suffix in ("", "_tta"))
    for value in [*one_scale, *tta]:
        assert f"{value:.2f}" in bullet, value
    lead = (tta[1] + tta[2]) / 2 - tta[0], (one_scale[1] + one_scale[2]) / 2 - one_scale[0]
    assert f"leads by **{lead[1]:.2f} at one scale, {lead[0]:.2f} with flips and scales" in bullet


def test_the_seeds_needed_to_show_the_missing_points_follow_from_the_kept_recipes_spread(means):
    scores = [mean_iu(means, run) for run in KEPT_SEEDS]
    spread = statistics.stdev(scores)
    z = statistics.NormalDist().inv_cdf(0.975) + statistics.NormalDist().inv_cdf(0.8)
    baseline = [mean_iu(means, run) for run in ("fcn8s_il12_ema_w8_16k", "fcn8s_il12_ema_w8_16k_s1")]
    missing = 3 - (statistics.mean(scores) - statistics.mean(baseline))
    assert f"(3 less the {3 - missing:.2f} measured)" in DOC
    bullet = DOC.split("* **Issue 23's target", 1)[1].split(" * **", 1)[0].split("### ")[0]
    assert f"standard deviation of {spread:.2f}" in bullet
    assert f"worth the missing {missing:.2f}" in bullet
    assert f"about {round(2 * (spread * z / missing) ** 2)} seeds a side" in bullet
    assert f"changes of about {spread * z * (1 / 2 + 1 / 4) ** 0.5:.1f} points" in bullet
