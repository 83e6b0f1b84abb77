"""What a net trained without a drive gets wrong on it: three test-time probes of the drive-held-out protocol
(docs/camvid.md), each scoring the same net on the held-out frames with one thing changed.

* **Colour statistics.** Each frame's channels shifted and scaled to the training frames' mean and standard
  deviation (per frame, then per drive: the held-out frames' own mean and deviation). If the held-out drive's
  light were what the net fails on, matching its colour statistics would raise the score.
* **Class weights.** The training loss weighted class c by w_c; the prediction argmax(log p - tau * log w)
  takes part of that weighting back (tau = 1: all of it, to first order). If the weights pushed uncertain
  pixels of the new drive into rare classes, this would raise the score.
* **BatchNorm statistics of the new drive** (AdaBN). Every BatchNorm's running mean and variance replaced by
  their plain mean over the held-out frames themselves, one full frame at a time, labels unused, the rest of
  the net as at test time (dropout off). If the new drive's features are shifted in a way normalising them
  again undoes, this raises the score; it needs the drive's frames before predicting them, so it is an
  adaptation a user could make per drive, not part of a recipe.

    .venv/bin/python scripts/heldout_probe.py runs/heldout/fcn8s_il12_ema_w8_16k_3k_s0/last.pth \\
        --root ../shared/data/camvid --threads 1

Nothing here trains or is chosen on val: it reads the held-out drive and the training frames the run used.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable

import numpy as np
import torch
from torch import nn

import fcnseg
from fcnseg.checkpoint import read_checkpoint
from fcnseg.commands.options import positive_int
from fcnseg.data.balance import balancing_weights, class_pixel_counts
from fcnseg.data.camvid import CamVid
from fcnseg.errors import ConfigError, FcnsegError
from fcnseg.metrics import confusion_matrix, scores_from_confusion
from fcnseg.normalization import normalize
from fcnseg.runtime import cpu_model

TAUS = (0.0, 0.25, 0.5, 0.75, 1.0)


def colour_stats(images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The mean over ``images`` of each image's per-channel mean and standard deviation (0-255)."""
    pixels = [image.reshape(-1, 3).astype(np.float64) for image in images]
    return np.mean([p.mean(0) for p in pixels], 0), np.mean([p.std(0) for p in pixels], 0)


def match_colours(image: np.ndarray, source: tuple[np.ndarray, np.ndarray],
                  target: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """``image`` with each channel moved from mean/deviation ``source`` to ``target`` (rounded, clipped)."""
    (mean, std), (to_mean, to_std) = source, target
    moved = (image.astype(np.float64) - mean) / np.maximum(std, 1e-6) * to_std + to_mean
    return np.clip(np.rint(moved), 0, 255).astype(np.uint8)


def adjusted_labels(probs: torch.Tensor, class_weights: torch.Tensor, tau: float) -> torch.Tensor:
    """argmax over classes of log p - tau * log w (C x H x W probabilities, C weights)."""
    shift = tau * class_weights.log().view(-1, 1, 1)
    return (probs.clamp_min(1e-12).log() - shift).argmax(0)


def adapt_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Replace every BatchNorm's running statistics by their plain mean over ``batches`` (torch's cumulative
    average, momentum None), with the rest of ``model`` in eval mode so that dropout stays off; returns the
    number of batches. The net is left in eval mode with its BatchNorms' momentum as it was."""
    norms = [module for module in model.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]
    momenta = [norm.momentum for norm in norms]
    model.eval()
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
        norm.train()
    count = 0
    with torch.no_grad():
        for batch in batches:
            model(batch)
            count += 1
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum
    model.eval()
    return count


def score(held: list[tuple[np.ndarray, np.ndarray]], predict: Callable[[np.ndarray], list[torch.Tensor]], count: int,
          classes: int, ignore: int) -> list[float]:
    """Mean IU (percent) of each of the ``count`` label maps ``predict`` gives per held-out (image, label)."""
    totals = [torch.zeros(classes, classes, dtype=torch.int64) for _ in range(count)]
    for image, label in held:
        target = torch.as_tensor(label).long()
        for total, labels in zip(totals, predict(image), strict=True):
            total += confusion_matrix(labels.long(), target, classes, ignore)
    return [100 * scores_from_confusion(total)["mean_iu"] for total in totals]


def main() -> None:
    try:
        probe()
    except FcnsegError as error:  # bad input: one line, as fcnseg's commands print it
        sys.exit(f"heldout_probe: error: {error}")


def probe() -> None:
    """Parse the command line, then score the net as is and with each probe."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("weights", help="last.pth of a drive-held-out run")
    parser.add_argument("--root", default="../shared/data/camvid")
    parser.add_argument("--threads", type=positive_int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = read_checkpoint(args.weights, mmap=True).get("config")
    if not isinstance(config, dict) or config.get("dataset") != "camvid":
        raise ConfigError(f"{args.weights} is not the last.pth of a CamVid training run (no such config)")
    held_split, train = (CamVid(args.root, split=config[key]) for key in ("val_split", "train_split"))
    held = [held_split.load(i) for i in range(len(held_split))]  # decoded once: every probe scores these
    seg = fcnseg.load(args.weights, device="cpu")
    classes, ignore = len(seg.info.class_names), seg.info.ignore_index
    trained = colour_stats([train.load(i)[0] for i in range(len(train))])
    drive = colour_stats([image for image, _ in held])
    print(f"{cpu_model()}; {args.weights}; held out: {config['val_split']} ({len(held)} frames)")
    print(f"colour mean / deviation: training frames {trained[0].round(1)} / {trained[1].round(1)}, "
          f"held-out frames {drive[0].round(1)} / {drive[1].round(1)}")
    weights = torch.as_tensor(balancing_weights(config["class_weights"], class_pixel_counts(train),
                                                config["inverse_log_c"]), dtype=torch.float32)

    def predictions(image: np.ndarray) -> list[torch.Tensor]:  # one pass: the frame's probabilities, once
        probs = torch.as_tensor(seg.predict_probs(image))
        matched = [torch.as_tensor(seg.predict(match_colours(image, stats, trained)))
                   for stats in (colour_stats([image]), drive)]
        return [*matched, *(adjusted_labels(probs, weights, tau) for tau in TAUS)]

    per_frame, per_drive, *adjusted = score(held, predictions, 2 + len(TAUS), classes, ignore)
    print(f"mean IU as is {adjusted[0]:.2f}; colours matched per frame {per_frame:.1f}, per drive {per_drive:.1f}")
    named = zip(seg.info.class_names, weights.tolist(), strict=True)
    print("class weights " + ", ".join(f"{name} {weight:.2f}" for name, weight in named))
    print("class weights taken back: " + ", ".join(f"tau {t} {m:.1f}" for t, m in zip(TAUS, adjusted, strict=True)))
    adapt_batchnorm(seg.model, (normalize(image, seg.normalization).unsqueeze(0) for image, _ in held))
    adapted, = score(held, lambda image: [torch.as_tensor(seg.predict(image))], 1, classes, ignore)
    print(f"BatchNorm statistics measured on the {len(held)} held-out frames (AdaBN): mean IU {adapted:.2f}")


if __name__ == "__main__":
    main()
