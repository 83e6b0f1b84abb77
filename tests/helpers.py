"""Helpers the tests share (fixtures live in conftest.py)."""

from __future__ import annotations

import torch

from fcnseg.models import build_model


def random_fcn(name: str = "fcn8s", backbone: str = "vgg16", num_classes: int = 8, width: float = 1 / 16,
               geometry: str = "fast", seed: int = 2):
    """A small FCN with random (Kaiming) convolutions, score layers included: since score layers start at
    zero (every pixel would tie at class 0), this gives labels that vary across the image."""
    torch.manual_seed(seed)
    model = build_model(name, backbone=backbone, num_classes=num_classes, width=width, geometry=geometry)
    with torch.no_grad():
        for weight in model.parameters():
            if weight.dim() == 4 and weight.requires_grad:
                torch.nn.init.kaiming_normal_(weight)
    return model.eval()
