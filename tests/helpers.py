"""Helpers the tests share (fixtures live in conftest.py)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

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


def folder_dataset(root, broken=(), classes=8):
    """A folder dataset of four 40x48 images; the images named in ``broken`` are not images."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for index in range(4):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(root / "images" / f"{index}.png")
        Image.fromarray(rng.integers(0, classes, (40, 48), dtype=np.uint8)).save(root / "masks" / f"{index}.png")
    for name in broken:
        (root / "images" / f"{name}.png").write_bytes(b"not a picture" * 20)
    (root / "classes.txt").write_text("".join(f"class{i}\n" for i in range(classes)))
    return root


def digests(folder: Path) -> dict[str, str]:
    """sha256 of every file below ``folder``, by relative path: to show that nothing was lost or changed."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}
