"""An exponential moving average (EMA) of a net's weights, the net that is validated and saved.

After every optimizer step each floating-point entry of the state (weights and BatchNorm running
statistics) moves ``1 - d`` of the way to the training net's; integer entries (BatchNorm's batch count)
are copied. The average starts as a copy of the initial net, so ``d`` warms up as TensorFlow's
ExponentialMovingAverage does with ``num_updates``: d = min(decay, (1 + n) / (10 + n)) at update n.
Without that the random initial weights would keep a share of decay ** n (37% after 1000 steps at
0.999, 5% after 3000).

Not ``torch.optim.swa_utils.AveragedModel`` with ``get_ema_multi_avg_fn``: it copies the net at its first
update instead of averaging from the initial one with a warmed-up decay, averages integer buffers, and wraps
the net (``module.`` names and ``n_averaged`` in the state), so its numbers and checkpoints differ from
these, and exact resume of the runs already trained would be lost.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_copy(model: nn.Module) -> nn.Module:
    """A frozen copy of ``model`` in eval mode, to hold the average."""
    return copy.deepcopy(model).eval().requires_grad_(False)


def warmed_up_decay(decay: float, updates: int) -> float:
    """The decay of update number ``updates`` (counted from 0): min(decay, (1 + n) / (10 + n))."""
    return min(decay, (1 + updates) / (10 + updates))


@torch.no_grad()
def update_ema(average: nn.Module, model: nn.Module, decay: float, updates: int) -> None:
    """average <- d * average + (1 - d) * model, entry by entry of the two state dicts, with d the
    :func:`warmed_up_decay` of update number ``updates``."""
    d = warmed_up_decay(decay, updates)
    averaged, current = average.state_dict(), model.state_dict()
    for name, value in averaged.items():
        if value.is_floating_point():
            value.lerp_(current[name], 1 - d)
        else:
            value.copy_(current[name])
