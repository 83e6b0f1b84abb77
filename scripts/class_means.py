"""Per-class IoU of one set of evaluation reports against another, each the plain mean over its reports: how
docs/camvid.md compares a candidate's seeds with the kept recipe's ("fence 23.1 / 27.1").

    .venv/bin/python scripts/class_means.py docs/camvid/heldout/RUN_s0 docs/camvid/heldout/RUN_s1 \\
        --against docs/camvid/heldout/KEPT docs/camvid/heldout/KEPT_s1

A report is a folder ``fcnseg eval --out`` wrote (its metrics.json). Prints one line a class, in percent,
the candidate's mean, the other's, and their difference, the largest losses first, then the mean IU. A class
a report leaves undefined (null in metrics.json: absent from the frames scored) makes its means "-".
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from fcnseg.errors import ConfigError, FcnsegError
from fcnseg.evaluate import read_report

MEAN_IU = "mean IU"


def report_scores(folder: Path) -> dict[str, float]:
    """One report's IoU per class and its mean IU, in percent, from ``folder/metrics.json``."""
    metrics = read_report(folder)
    scores = {name: 100 * entry["iou"] for name, entry in metrics["per_class"].items()}
    scores[MEAN_IU] = 100 * metrics["mean_iu"]
    return scores


def mean_scores(folders: list[Path]) -> dict[str, float]:
    """The plain mean over ``folders``' reports of each class's IoU and of the mean IU; the reports must
    name the same classes."""
    reports = [report_scores(folder) for folder in folders]
    for folder, report in zip(folders[1:], reports[1:], strict=True):
        if report.keys() != reports[0].keys():
            raise ConfigError(f"{folder} scores other classes than {folders[0]}; give reports of one dataset")
    return {name: sum(report[name] for report in reports) / len(reports) for name in reports[0]}


def comparison_lines(candidate: dict[str, float], against: dict[str, float]) -> list[str]:
    """``name candidate / against (difference)`` per class, the largest losses first and undefined ones ("-")
    after the rest, the mean IU last."""
    if candidate.keys() != against.keys():
        raise ConfigError("the two sets of reports score different classes; give reports of one dataset")
    difference = {name: candidate[name] - against[name] for name in candidate}
    classes = sorted((name for name in candidate if name != MEAN_IU),
                     key=lambda name: (math.isnan(difference[name]), difference[name]))

    def text(value: float, sign: str = "") -> str:
        return "-" if math.isnan(value) else f"{value:{sign}.1f}"

    return [f"{name} {text(candidate[name])} / {text(against[name])} ({text(difference[name], '+')})"
            for name in [*classes, MEAN_IU]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reports", nargs="+", type=Path, help="the candidate's report folders")
    parser.add_argument("--against", nargs="+", type=Path, required=True, help="the report folders to compare with")
    args = parser.parse_args(argv)
    try:
        lines = comparison_lines(mean_scores(args.reports), mean_scores(args.against))
    except FcnsegError as error:
        print(f"class_means: error: {error}", file=sys.stderr)
        return 2
    print(f"mean of {len(args.reports)} report(s) / mean of {len(args.against)}, IoU in percent:")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
