"""An exponential moving average (EMA) of a net's weights, the net that is validated and saved.

After every optimizer step each floating-point entry of the state (weights and BatchNorm running
statistics) moves ``1 - decay`` of the way to the training net's; integer entries (BatchNorm's batch
count) are copied. The average starts as a copy of the initial net, whose share after ``n`` steps is
``decay ** n`` (0.999 ** 12000 = 6e-6).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_copy(model: nn.Module) -> nn.Module:
    """A frozen copy of ``model`` in eval mode, to hold the average."""
    return copy.deepcopy(model).eval().requires_grad_(False)


@torch.no_grad()
def update_ema(average: nn.Module, model: nn.Module, decay: float) -> None:
    """average <- decay * average + (1 - decay) * model, entry by entry of the two state dicts."""
    averaged, current = average.state_dict(), model.state_dict()
    for name, value in averaged.items():
        if value.is_floating_point():
            value.lerp_(current[name], 1 - decay)
        else:
            value.copy_(current[name])
