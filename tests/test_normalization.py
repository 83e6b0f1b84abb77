import numpy as np
import pytest
import torch

from fcnseg.normalization import caffe_normalization, denormalize, mean_color, normalize

from .helpers import error_names

# The published constants, written out here rather than read from the module under test: the authors'
# Caffe mean (BGR, 0-255; pytorch-fcn's mean_bgr, the FCN data layers' "mean") and torchvision's ImageNet
# mean and standard deviation (RGB, 0-1).
CAFFE_BGR = (104.00698793, 116.66876762, 122.67891434)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def test_caffe_is_bgr_minus_mean_in_0_255():
    pixel = np.array([[[10, 20, 30]]], dtype=np.uint8)  # R, G, B
    x = normalize(pixel, "caffe")
    torch.testing.assert_close(x[:, 0, 0], torch.tensor([30 - 104.00698793, 20 - 116.66876762, 10 - 122.67891434]))


def test_imagenet_is_rgb_in_0_1_standardised():
    pixel = np.array([[[255, 0, 128]]], dtype=np.uint8)
    x = normalize(pixel, "imagenet")
    expected = [(1.0 - 0.485) / 0.229, (0.0 - 0.456) / 0.224, (128 / 255 - 0.406) / 0.225]
    torch.testing.assert_close(x[:, 0, 0], torch.tensor(expected))


@pytest.mark.parametrize("kind, rgb", [("imagenet", (124, 116, 104)), ("caffe", (123, 117, 104))])
def test_mean_colour_normalises_to_about_zero(kind, rgb):
    assert mean_color(kind) == rgb
    x = normalize(np.array([[rgb]], dtype=np.uint8), kind)
    half_a_grey_level = 0.5 / 255 / min(IMAGENET_STD) if kind == "imagenet" else 0.5  # rounding to 0-255
    assert x.abs().max() <= half_a_grey_level


@pytest.mark.parametrize("kind", ["imagenet", "caffe"])
def test_batches_and_round_trip(kind):
    images = torch.randint(0, 256, (2, 3, 4, 5), dtype=torch.uint8)
    x = normalize(images, kind)
    assert x.shape == (2, 3, 4, 5) and x.dtype == torch.float32
    torch.testing.assert_close(denormalize(x, kind), images.float(), atol=1e-4, rtol=0)


def test_unknown_kind_and_bad_shape():
    for kind in ("bgr", "caffe:1,2", "caffe:a,b,c", "hha", "imagenet+rgb"):
        with pytest.raises(ValueError) as caught:
            normalize(np.zeros((2, 2, 3), np.uint8), kind)
        # The part not understood, and every form there is.
        error_names(caught, repr(kind.split("+")[-1]), "imagenet", "caffe:B,G,R", "hha:A,B,C", "+")
    with pytest.raises(ValueError) as caught:
        normalize(np.zeros((2, 2, 9), np.uint8), "imagenet+caffe")
    error_names(caught, "'imagenet+caffe'", "2", "3")  # the rule, its inputs and the image's
    with pytest.raises(ValueError, match="HxWx3"):
        normalize(np.zeros((2, 2), np.uint8))


def test_a_mean_no_8_bit_pixel_could_have_is_refused():
    # "caffe:nan,1,2" was accepted by build_model: every input NaN, a net that says one class without a word.
    import fcnseg

    for kind in ("caffe:nan,1,2", "hha:inf,1,2", "caffe:-1,0,0", "caffe:1,2,256", "imagenet+caffe:1,nan,3"):
        with pytest.raises(ValueError) as caught:
            normalize(np.zeros((2, 2, 3 * len(kind.split("+"))), np.uint8), kind)
        error_names(caught, repr(kind.split("+")[-1]), "0 to 255")
        with pytest.raises(ValueError, match="0 to 255"):
            fcnseg.build_model("fcn32s", backbone="vgg16", num_classes=2, width=1 / 16, normalization=kind)
    assert normalize(np.zeros((1, 1, 3), np.uint8), "caffe:0,255,0")[:, 0, 0].tolist() == [0.0, -255.0, 0.0]


def test_a_caffe_normalization_with_its_own_mean():
    # SIFT Flow's mean, as the authors' data layer subtracts it (BGR).
    kind = caffe_normalization((114.578, 115.294, 108.353))
    assert kind == "caffe:114.578,115.294,108.353"
    pixel = np.array([[[10, 20, 30]]], dtype=np.uint8)  # R, G, B
    expected = torch.tensor([30 - 114.578, 20 - 115.294, 10 - 108.353])
    torch.testing.assert_close(normalize(pixel, kind)[:, 0, 0], expected)
    assert mean_color(kind) == (108, 115, 115)
    images = torch.randint(0, 256, (1, 3, 4, 5), dtype=torch.uint8)
    torch.testing.assert_close(denormalize(normalize(images, kind), kind), images.float(), atol=1e-4, rtol=0)


def test_two_inputs_are_normalised_each_by_its_own_rule():
    # NYUDv2's colour + HHA net: colour as Caffe BGR minus its mean, HHA kept in order minus its mean.
    kind = "caffe:116.19,97.203,92.318+hha:132.431,94.076,118.477"
    pixel = np.array([[[10, 20, 30, 40, 50, 60]]], dtype=np.uint8)  # R, G, B, then HHA's three channels
    expected = torch.tensor([30 - 116.19, 20 - 97.203, 10 - 92.318, 40 - 132.431, 50 - 94.076, 60 - 118.477])
    torch.testing.assert_close(normalize(pixel, kind)[:, 0, 0], expected)
    assert mean_color(kind, channels=6) == (92, 97, 116, 132, 94, 118)
    images = torch.randint(0, 256, (2, 6, 4, 5), dtype=torch.uint8)
    torch.testing.assert_close(denormalize(normalize(images, kind), kind), images.float(), atol=1e-4, rtol=0)
    # One rule for every input
    both = normalize(images, "imagenet")
    torch.testing.assert_close(both, torch.cat([normalize(images[:, :3], "imagenet"),
                                                normalize(images[:, 3:], "imagenet")], 1))
