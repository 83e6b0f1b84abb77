"""Helpers the tests share (fixtures live in conftest.py)."""

from __future__ import annotations

import hashlib
import importlib.util
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fcnseg.models import build_model

REPO = Path(__file__).resolve().parents[1]


def load_script(path: Path, name: str | None = None):
    """Import a file that is not part of a package (a script, hubconf.py) as a module."""
    spec = importlib.util.spec_from_file_location(name or path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def random_fcn(name: str = "fcn8s", backbone: str = "vgg16", num_classes: int = 8, width: float = 1 / 16,
               geometry: str = "fast", seed: int = 2, **spec_fields):
    """A small FCN with random (Kaiming) convolutions, score layers included: since score layers start at
    zero (every pixel would tie at class 0), this gives labels that vary across the image. ``spec_fields``:
    more of build_model's fields (inputs, extra_heads, normalization, classes, ...)."""
    torch.manual_seed(seed)
    model = build_model(name, backbone=backbone, num_classes=num_classes, width=width, geometry=geometry,
                        **spec_fields)
    with torch.no_grad():
        for weight in model.parameters():
            if weight.dim() == 4 and weight.requires_grad:
                torch.nn.init.kaiming_normal_(weight)
    return model.eval()


def folder_dataset(root, broken=(), classes=8, splits=None):
    """A folder dataset of four 40x48 images; the images named in ``broken`` are not images; ``splits``: split name
    -> the image names it lists."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for index in range(4):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(root / "images" / f"{index}.png")
        Image.fromarray(rng.integers(0, classes, (40, 48), dtype=np.uint8)).save(root / "masks" / f"{index}.png")
    for name in broken:
        (root / "images" / f"{name}.png").write_bytes(b"not a picture" * 20)
    (root / "classes.txt").write_text("".join(f"class{i}\n" for i in range(classes)))
    for split, names in (splits or {}).items():
        (root / "splits").mkdir(exist_ok=True)
        (root / "splits" / f"{split}.txt").write_text("".join(f"{name}\n" for name in names))
    return root


def digests(folder: Path) -> dict[str, str]:
    """sha256 of every file below ``folder``, by relative path: to show that nothing was lost or changed."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


SIFTFLOW_CATEGORY = "spatial_envelope_256x256_static_8outdoorcategories"


def siftflow_folder(root: Path, ids=("coast_a", "forest_b", "street_c", "city_d"), size=(40, 48), seed=0) -> Path:
    """A small SIFT Flow folder (images, SemanticLabels and GeoLabels .mat files as the dataset has them:
    0 / -1 void, classes from 1) and ``ids.txt`` listing ``ids``; labels copy a coarse pattern of the image
    so that a net can learn them."""
    import scipy.io

    rng = np.random.default_rng(seed)
    for folder in ("Images", "SemanticLabels", "GeoLabels"):
        (root / folder / SIFTFLOW_CATEGORY).mkdir(parents=True, exist_ok=True)
    for name in ids:
        semantic = rng.integers(0, 34, size)  # 0: void
        geometric = rng.choice([-1, 1, 2, 3], size)  # -1: void
        image = np.stack([semantic * 7, geometric * 60 + 60, rng.integers(0, 256, size)], axis=2).astype(np.uint8)
        Image.fromarray(image).save(root / "Images" / SIFTFLOW_CATEGORY / f"{name}.jpg", quality=100)
        scipy.io.savemat(root / "SemanticLabels" / SIFTFLOW_CATEGORY / f"{name}.mat", {"S": semantic})
        scipy.io.savemat(root / "GeoLabels" / SIFTFLOW_CATEGORY / f"{name}.mat", {"S": geometric})
    (root / "ids.txt").write_text("".join(f"{name}\n" for name in ids))
    return root


def nyud_folder(root: Path, ids=("5001", "5002", "5003"), size=(24, 32), hha: bool = True, seed: int = 0) -> Path:
    """A small NYUDv2 folder as the authors' nyud.tar.gz lays it out: colour images, 16-bit depth in mm (a room
    seen from a camera 1.2 m above a floor), HHA images (with ``hha``) and .mat labels (0 void, 1..40);
    ``ids.txt`` lists ``ids``."""
    import scipy.io

    rng = np.random.default_rng(seed)
    for folder in ("data/images", "data/depth", "data/hha", "segmentation"):
        if folder != "data/hha" or hha:
            (root / folder).mkdir(parents=True, exist_ok=True)
    rows = np.arange(size[0], dtype=np.float64)[:, None]
    for name in ids:
        depth_mm = np.clip(1200 * size[0] / np.maximum(rows - size[0] / 2, 1) / 4, 500, 6000) * np.ones(size)
        depth_mm[rng.random(size) < 0.05] = 0  # holes, as the Kinect leaves them
        Image.fromarray(depth_mm.astype(np.uint16)).save(root / "data" / "depth" / f"img_{name}.png")
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / "data" / "images"
                                                                                 / f"img_{name}.png")
        if hha:
            Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / "data" / "hha"
                                                                                     / f"img_{name}.png")
        scipy.io.savemat(root / "segmentation" / f"img_{name}.mat",
                         {"segmentation": rng.integers(0, 41, size).astype(np.uint8)})
    (root / "ids.txt").write_text("".join(f"{name}\n" for name in ids))
    return root


def shapes_dataset(root, size=64):
    """Four noisy pictures of a square, a disc and a 10-pixel stripe on a background, as a folder dataset."""
    rng = np.random.default_rng(0)
    colours = np.array([[90, 90, 90], [200, 60, 60], [60, 200, 60], [60, 60, 200]], dtype=float)
    yy, xx = np.mgrid[0:size, 0:size]
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for index in range(4):
        label = np.zeros((size, size), np.uint8)
        top, left = rng.integers(0, size // 2, 2)
        side = rng.integers(size // 4, size // 2)
        label[top:top + side, left:left + side] = 1
        cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
        label[(yy - cy) ** 2 + (xx - cx) ** 2 <= rng.integers(size // 8, size // 4) ** 2] = 2
        column = rng.integers(0, size - 10)
        label[:, column:column + 10] = 3
        image = colours[label] + rng.normal(0, 25, (size, size, 3))
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(root / "images" / f"{index}.png")
        Image.fromarray(label).save(root / "masks" / f"{index}.png")
    (root / "classes.txt").write_text("background\nsquare\ndisc\nstripe\n")
    return root


def overfit_config(root, out, iterations: int, log_interval: int):
    """The TrainConfig that makes a tiny FCN-8s learn the four pictures of ``shapes_dataset(root)`` by heart."""
    from fcnseg.train import TrainConfig

    return TrainConfig.from_dict({
        "model": "fcn8s", "backbone": "vgg16_bn", "width": 1 / 8, "geometry": "fast", "dataset": "folder",
        "root": str(root), "train_split": "all", "val_split": "all", "flip": False, "batch_size": 4, "workers": 0,
        "optimizer": "adamw", "lr": 3e-3, "weight_decay": 0.0, "dropout": 0.0, "iterations": iterations,
        "val_interval": iterations, "checkpoint_interval": iterations, "log_interval": log_interval, "threads": 1,
        "out": str(out)})


def mentions(text: str, name) -> bool:
    """Whether ``text`` names ``name``: as written, and a number (``7``, ``2.7``, ``5,120``) as a number of its
    own, not as digits inside another (``pytest-72``, ``0.0625``) or inside a file name (``test_x0/``)."""
    name = str(name)
    if not re.fullmatch(r"-?[\d.,]+", name):
        return name in text
    return re.search(rf"(?<![\w.,/-]){re.escape(name)}(?!\w|[.,]\d)", text) is not None


def one_line_error(err: str, *names: str, command: str | None = None) -> str:
    """The single line a refused command or call printed: one line, no traceback, mentioning each of ``names``
    (the file, the value, the option: what a user needs to fix it, not the sentence around them; see
    :func:`mentions`). With ``command``, the line starts ``fcnseg COMMAND: error:``. Returns the line."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    if command is not None:
        assert lines[0].startswith(f"fcnseg {command}: error: "), err
    for name in names:
        assert mentions(lines[0], name), f"{str(name)!r} not in {lines[0]!r}"
    return lines[0]


def refused(capsys, argv: list[str], *names: str) -> str:
    """Run ``fcnseg ARGV`` in this process and check it was refused: exit code 2 and :func:`one_line_error`
    naming each of ``names``. Returns the line."""
    from fcnseg.cli import main

    capsys.readouterr()  # what earlier calls printed is not this command's
    code = main([str(arg) for arg in argv])
    err = capsys.readouterr().err
    assert code == 2, f"exit {code}: {err}"
    return one_line_error(err, *names, command=str(argv[0]))


def error_names(excinfo, *names: str) -> str:
    """The message of an exception caught by ``pytest.raises(...) as excinfo``: each of ``names`` (the file,
    the value, the option) is in it, written as is (no regular expression; numbers as in :func:`mentions`).
    Returns the message."""
    message = str(excinfo.value)
    for name in names:
        assert mentions(message, name), f"{str(name)!r} not in {message!r}"
    return message


# Options that make ``fcnseg train`` tiny: a width-1/16 net on eight 40x48 synthetic pictures, one thread.
TINY_TRAIN = ["--width", "0.0625", "--geometry", "fast", "--batch-size", "4", "--workers", "0", "--threads", "1",
              "--set", "dataset_options={num_images: 8, height: 40, width: 48}", "--quiet"]


def write_png(path: Path, seed: int = 1, size: tuple[int, int] = (48, 64)) -> Path:
    """A synthetic street scene of ``size`` (height, width) saved as a PNG at ``path`` (folders made)."""
    from fcnseg.data.synthetic import render_scene

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(render_scene(seed, *size)[0]).save(path)
    return path


def torchvision_file(path: Path, backbone: str, width: float = 1 / 16, seed: int = 0) -> Path:
    """A torchvision-layout ImageNet classifier file of ``backbone`` at ``width``: the backbone's own layers
    (random), its fc6 / fc7 as the classifier's fully connected layers (VGG: classifier.0 / .3, AlexNet:
    classifier.1 / .4), and the 1000-way ``fc`` (GoogLeNet, ResNet) or ``classifier.6``."""
    from fcnseg.models.backbones import BACKBONES

    torch.manual_seed(seed)
    trunk = BACKBONES[backbone](width)
    state = trunk.state_dict()
    fc = {"vgg16": ("classifier.0", "classifier.3"), "vgg16_bn": ("classifier.0", "classifier.3"),
          "alexnet": ("classifier.1", "classifier.4")}.get(backbone)
    if fc:
        for layer, name in zip(("fc6", "fc7"), fc, strict=True):
            weight, bias = state.pop(f"{layer}.weight"), state.pop(f"{layer}.bias")
            state[f"{name}.weight"], state[f"{name}.bias"] = weight.reshape(weight.shape[0], -1), bias
        state["classifier.6.weight"] = torch.randn(1000, trunk.out_channels[2])
        state["classifier.6.bias"] = torch.zeros(1000)
    else:
        state["fc.weight"], state["fc.bias"] = torch.randn(1000, trunk.out_channels[2]) * 0.01, torch.zeros(1000)
    torch.save(state, path)
    return path


def randomize_scores(model, seed: int = 3):
    """``model`` with random score layers (as built they are zero, and every pixel would tie): its outputs then
    depend on every layer, so comparing them compares the whole net."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "score" in name and parameter.requires_grad:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    return model.eval()
