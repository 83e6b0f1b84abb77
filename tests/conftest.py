"""Fixtures shared across the test files."""

import pytest
import torch

from fcnseg.checkpoint import save_model
from fcnseg.data.info import SYNTHETIC_ROADS
from fcnseg.models import build_model


@pytest.fixture
def one_thread():
    """Tiny convolutions on a shared CPU run far faster on one thread than on contended threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A width-1/16 FCN-8s on the synthetic classes, with random convolutions: since score layers start
    at zero (every pixel would tie at class 0), this gives labels that vary across the image."""
    torch.manual_seed(2)
    model = build_model("fcn8s", backbone="vgg16", num_classes=8, width=1 / 16, geometry="fast")
    with torch.no_grad():
        for weight in model.parameters():
            if weight.dim() == 4 and weight.requires_grad:
                torch.nn.init.kaiming_normal_(weight)
    return save_model(model, SYNTHETIC_ROADS, tmp_path_factory.mktemp("ckpt") / "tiny.pt")
