"""Average the training net's weights over a stretch of a run, from copies of its ``last.pth`` taken along the
way (``scripts/keep_snapshots.sh``): an experiment of the drive-held-out protocol (docs/camvid.md) asking
whether a longer average than the recipe's EMA (decay 0.999, about the last 1000 steps) copes better with an
unseen drive, as averaging weights over a wide stretch did in domain generalisation (SWA, SWAD).

    .venv/bin/python scripts/average_snapshots.py runs/snapshots/RUN/*.pth --from 10000 --out /tmp/avg.pth
    .venv/bin/python scripts/average_snapshots.py runs/snapshots/RUN/*.pth --ema 0.9997 --out /tmp/ema.pth

``--from N``: the plain mean of the snapshots at iteration N and later. ``--ema D``: snapshot k weighted by
D ** (iterations from it to the last snapshot), so a snapshot every 500 steps stands for its 500 steps; an
approximation of an EMA taken at every step. Floating-point entries (weights and BatchNorm's running
statistics) are averaged as the trainer's EMA does; integer entries come from the last snapshot.
``--recompute-bn`` then measures BatchNorm's running statistics again on the averaged net, as SWA does: the
plain mean over one epoch of the run's training split, augmented as in training (CutMix aside), in batches of
its batch size. The output is a net checkpoint that ``fcnseg eval`` reads, written atomically as fcnseg's own
commands write theirs: a file of someone else's at ``--out``, there at the start or made while the script runs, is
kept unless ``--overwrite``; the script's own earlier output is replaced.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn
from torch.optim.swa_utils import update_bn

from fcnseg.checkpoint import model_from_checkpoint, read_checkpoint, save_model
from fcnseg.data.collate import PadCollate
from fcnseg.errors import ConfigError, FcnsegError
from fcnseg.outputs import output_file
from fcnseg.train.config import TrainConfig
from fcnseg.train.data import build_datasets


def snapshot_weights(path: Path) -> tuple[int, dict, dict[str, torch.Tensor]]:
    """(iteration, run options, the training net's weights) of one copy of a run's ``last.pth``; mapped, so
    the optimizer's state is never read."""
    data = read_checkpoint(path, mmap=True)
    if "iteration" not in data or "optimizer" not in data:
        raise ConfigError(f"{path} is not a training run's last.pth (no training state); give the copies "
                          "keep_snapshots.sh made")
    return int(data["iteration"]), data.get("config"), data.get("train_state_dict", data["model_state_dict"])


def averaging_weights(iterations: list[int], start: int | None, decay: float | None) -> list[float]:
    """Each snapshot's share of the average, summing to 1 (see the module's docstring)."""
    last = max(iterations)
    if decay is not None:
        raw = [decay ** (last - it) for it in iterations]
    else:
        raw = [1.0 if it >= start else 0.0 for it in iterations]
    if sum(raw) == 0:
        raise ConfigError(f"no snapshot at iteration {start} or later (the last is at {last})")
    return [w / sum(raw) for w in raw]


def average_states(states: list[dict[str, torch.Tensor]], shares: list[float]) -> dict[str, torch.Tensor]:
    """The weighted mean of the floating-point entries (in float64, stored as they were); integer entries of
    the last state."""
    averaged = {}
    for name, last in states[-1].items():
        if not last.is_floating_point():
            averaged[name] = last.clone()
            continue
        total = sum(share * state[name].double() for state, share in zip(states, shares, strict=True) if share)
        averaged[name] = total.to(last.dtype)
    return averaged


def recompute_batchnorm(model: nn.Module, run_options: dict, root: str | None) -> int:
    """Replace every BatchNorm's running statistics by their plain mean over one epoch of the run's training
    split (epoch 0's augmentation, batches of the run's size), with torch's ``update_bn``; returns the number
    of batches."""
    config = TrainConfig.from_dict({**run_options, **({"root": root} if root else {})}, "the snapshot's config")
    train, _ = build_datasets(config, model.spec.normalization_text)
    collate, size = PadCollate(train.info.ignore_index), config.batch_size
    batches = [range(start, start + size) for start in range(0, len(train) - size + 1, size)]
    update_bn((collate([train.sample(index, 0) for index in batch]) for batch in batches), model)
    return len(batches)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("snapshots", nargs="+", type=Path, help="copies of a run's last.pth")
    how = parser.add_mutually_exclusive_group(required=True)
    how.add_argument("--from", dest="start", type=int, help="plain mean of the snapshots from this iteration on")
    how.add_argument("--ema", type=float, help="exponential weights with this decay per iteration")
    parser.add_argument("--out", type=Path, required=True, help="the averaged net's checkpoint")
    parser.add_argument("--recompute-bn", action="store_true", help="measure BatchNorm's statistics again")
    parser.add_argument("--root", help="the dataset's folder for --recompute-bn (default: the run's)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    args = parser.parse_args(argv)
    try:
        if args.ema is not None and not 0 < args.ema < 1:
            raise ConfigError(f"--ema must be in (0, 1), got {args.ema}")
        outputs = output_file(args.out, "average_snapshots", args.overwrite, inputs=args.snapshots)
        snapshots, runs = {}, set()  # one per iteration: a resumed run rewrites the same iteration's weights
        for path in args.snapshots:
            iteration, config, state = snapshot_weights(path)
            snapshots[iteration] = config, state, path
            runs.add(repr(config))  # of every snapshot: two runs' copies at the same iterations would hide
        if len(runs) > 1:
            raise ConfigError(f"the snapshots come from {len(runs)} runs of different configs; give one run's")
        iterations = sorted(snapshots)
        configs, states, paths = zip(*(snapshots[it] for it in iterations), strict=True)
        shares = averaging_weights(iterations, args.start, args.ema)
        model, info = model_from_checkpoint(paths[-1])
        model.load_state_dict(average_states(list(states), shares))
        if args.recompute_bn:
            batches = recompute_batchnorm(model, configs[-1], args.root)
            print(f"BatchNorm statistics measured again over {batches} batches")
        used = [f"{it}:{share:.3f}" for it, share in zip(iterations, shares, strict=True) if share > 5e-4]
        with outputs.landing([args.out], flush=True):
            save_model(model, info, args.out, iteration=iterations[-1], averaged=used)
        print(f"averaged {len(used)} of {len(iterations)} snapshots (iteration:share) {' '.join(used)} -> {args.out}")
    except FcnsegError as error:
        print(f"average_snapshots: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
