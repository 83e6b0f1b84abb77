import numpy as np
import pytest
import torch

from fcnseg.normalization import CAFFE_BGR_MEAN, IMAGENET_MEAN, IMAGENET_STD, denormalize, normalize


def test_caffe_is_bgr_minus_mean_in_0_255():
    pixel = np.array([[[10, 20, 30]]], dtype=np.uint8)  # R, G, B
    x = normalize(pixel, "caffe")
    expected = torch.tensor([30 - CAFFE_BGR_MEAN[0], 20 - CAFFE_BGR_MEAN[1], 10 - CAFFE_BGR_MEAN[2]])
    torch.testing.assert_close(x[:, 0, 0], expected)


def test_imagenet_is_rgb_in_0_1_standardised():
    pixel = np.array([[[255, 0, 128]]], dtype=np.uint8)
    x = normalize(pixel, "imagenet")
    expected = [(v / 255 - m) / s for v, m, s in zip((255, 0, 128), IMAGENET_MEAN, IMAGENET_STD, strict=True)]
    torch.testing.assert_close(x[:, 0, 0], torch.tensor(expected))


@pytest.mark.parametrize("kind", ["imagenet", "caffe"])
def test_batches_and_round_trip(kind):
    images = torch.randint(0, 256, (2, 3, 4, 5), dtype=torch.uint8)
    x = normalize(images, kind)
    assert x.shape == (2, 3, 4, 5) and x.dtype == torch.float32
    torch.testing.assert_close(denormalize(x, kind), images.float(), atol=1e-4, rtol=0)


def test_unknown_kind_and_bad_shape():
    with pytest.raises(ValueError, match="choose one of"):
        normalize(np.zeros((2, 2, 3), np.uint8), "bgr")
    with pytest.raises(ValueError, match="HxWx3"):
        normalize(np.zeros((2, 2), np.uint8))
