
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fcnseg import inference
from fcnseg.errors import WeightsError
from fcnseg.inference import InferenceOptions, class_argmax, predict_labels, predict_probs, tile

from .helpers import random_fcn

C = 5


@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    pass


def pointwise_forward(classes: int = C) -> nn.Module:
    """A 1x1 convolution: translation- and flip-equivariant with no border effects."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, classes, 1)
    nn.init.normal_(conv.weight, std=2.0)
    return conv.eval()


class LocalFCN(nn.Module):
    """A small FCN (two conv + pool stages, 1x1 scores, bilinear x4): receptive field radius about 10 px."""

    RADIUS = 10  # 1 + 1 (conv1, pool1) + 2 + 2 (conv2, pool2 at stride 2) + 4 (bilinear at stride 4)

    def __init__(self, classes: int = C) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.score = nn.Conv2d(8, classes, 1)
        nn.init.normal_(self.score.weight, std=1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.max_pool2d(F.relu(self.conv1(x)), 2)
        y = F.max_pool2d(F.relu(self.conv2(y)), 2)
        return F.interpolate(self.score(y), size=x.shape[2:], mode="bilinear", align_corners=False)


def tiny_fcn(classes: int = C) -> nn.Module:
    return random_fcn(num_classes=classes)


def images(n: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, height, width, generator=generator)


def naive_slide(forward, x: torch.Tensor, window, overlap: float) -> torch.Tensor:
    """Reference: full-size sums and counts, every window at once (no streaming)."""
    n, _, height, width = x.shape
    (win_h, tops), (win_w, lefts) = tile(height, window[0], overlap), tile(width, window[1], overlap)
    sums, counts = None, torch.zeros(height, width)
    for top in tops:
        for left in lefts:
            probs = torch.softmax(forward(x[:, :, top:top + win_h, left:left + win_w]), dim=1)
            if sums is None:
                sums = torch.zeros(n, probs.shape[1], height, width)
            sums[:, :, top:top + win_h, left:left + win_w] += probs
            counts[top:top + win_h, left:left + win_w] += 1
    return sums / counts


def test_tiles_cover_the_axis_evenly_with_the_overlap_asked_for():
    # 4000 pixels, windows of at most 1024 sharing >= 128: five windows of 903, not four of 1024 and a fifth
    # that mostly repeats the fourth.
    assert tile(4000, 1024, 0.125) == (903, [0, 774, 1548, 2323, 3097])
    assert tile(3000, 1536, 1 / 16) == (1064, [0, 968, 1936])
    assert tile(10, 4, 0.0) == (4, [0, 3, 6])
    assert tile(4, 8, 0.5) == (4, [0]) and tile(10, 10, 0.3) == (10, [0])
    for length in range(1, 60):
        for window in range(1, 16):
            for overlap in (0.0, 0.1, 1 / 3, 0.5, 0.75):
                size, starts = tile(length, window, overlap)
                covered = torch.zeros(length, dtype=torch.bool)
                for start in starts:
                    covered[start:start + size] = True
                assert covered.all() and size <= window and starts[0] == 0 and starts[-1] == length - size
                shared = window - max(1, int(window * (1 - overlap) + 1e-9))
                if length > window:
                    # every neighbour shares at least the overlap asked for (to a pixel of rounding), and one
                    # window fewer could not cover the axis with it
                    assert all(a + size - b >= shared - 1 for a, b in zip(starts, starts[1:], strict=False))
                    count = len(starts) - 1
                    assert count == 1 or count * window - (count - 1) * shared < length


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_class_argmax_is_torchs_argmax_with_its_ties_and_refuses_nans(layout):
    # Scores of few distinct values tie often; the first of equal maxima wins.
    scores = torch.randint(0, 3, (2, 11, 6, 7), generator=torch.Generator().manual_seed(0)).float()
    if layout == "channels_last":
        scores = scores.contiguous(memory_format=torch.channels_last)
    labels = class_argmax(scores)
    assert labels.dtype == torch.int64 and torch.equal(labels, scores.argmax(1))
    # A NaN is torch's maximum: a net whose scores overflowed was labelled class 0 everywhere, and scored so.
    for bad in (float("nan"), float("inf")):
        broken = scores.clone()
        broken[1, 2, 3, 3] = bad
        with pytest.raises(WeightsError, match="NaN or infinite"):
            class_argmax(broken)
    tied = (scores == scores.amax(1, keepdim=True)).sum(1) > 1
    assert tied.sum() > 20  # the ties are there to be broken: by the lowest class
    assert torch.equal(labels[tied], (scores == scores.amax(1, keepdim=True)).float().argmax(1)[tied])
    assert torch.equal(class_argmax(scores[0], dim=0), scores[0].argmax(0))


def test_whole_mode_is_softmax_of_the_logits():
    forward, x = tiny_fcn(), images(2, 37, 45)
    with torch.no_grad():
        expected = torch.softmax(forward(x), dim=1)
    probs = predict_probs(forward, x)
    assert probs.shape == (2, C, 37, 45) and probs.dtype == torch.float32
    assert torch.allclose(probs, expected, atol=1e-6)
    assert torch.allclose(probs.sum(1), torch.ones(2, 37, 45), atol=1e-5)


@pytest.mark.parametrize("size,window,overlap", [((40, 52), (16, 16), 1 / 3), ((33, 29), (12, 20), 0.5),
                                                 ((20, 64), (20, 7), 0.0), ((17, 23), (5, 6), 0.6)])
def test_slide_equals_whole_for_a_forward_without_border_effects(size, window, overlap):
    forward, x = pointwise_forward(), images(1, *size)
    whole = predict_probs(forward, x)
    slide = predict_probs(forward, x, mode="slide", window=window, overlap=overlap, batch_size=3)
    assert torch.allclose(slide, whole, atol=1e-6)


@pytest.mark.parametrize("net,size,window,overlap,batch_size", [(tiny_fcn, (40, 36), (20, 20), 1 / 3, 4),
                                                                 (LocalFCN, (35, 50), (20, 24), 0.5, 1),
                                                                 (LocalFCN, (64, 24), (16, 40), 0.25, 8)])
def test_slide_matches_a_full_size_reference(net, size, window, overlap, batch_size):
    forward, x = net(), images(2, *size)
    slide = predict_probs(forward, x, mode="slide", window=window, overlap=overlap, batch_size=batch_size)
    with torch.no_grad():
        expected = naive_slide(forward, x, window, overlap)
    assert torch.allclose(slide, expected, atol=1e-6)


def test_slide_agrees_with_whole_away_from_window_borders():
    # Window offsets are multiples of the net's stride (4), so inside a window (further than the receptive
    # field from its cut edges) the window sees exactly what the whole image shows there.
    height, width, size = 96, 120, 48
    forward, x = LocalFCN(), images(1, height, width)
    whole = predict_probs(forward, x)
    slide = predict_probs(forward, x, mode="slide", window=(size, size), overlap=0.5)
    interior = torch.ones(height, width, dtype=torch.bool)
    r = LocalFCN.RADIUS
    (_, tops), (_, lefts) = tile(height, size, 0.5), tile(width, size, 0.5)
    assert all(start % 4 == 0 for start in tops + lefts)
    for top in tops:
        for left in lefts:
            inside = torch.zeros(height, width, dtype=torch.bool)
            inside[top:top + size, left:left + size] = True
            safe = inside.clone()
            # Cut edges (not the image border) see zero padding that the whole image does not have.
            if top > 0:
                safe[:top + r] = False
            if top + size < height:
                safe[top + size - r:] = False
            if left > 0:
                safe[:, :left + r] = False
            if left + size < width:
                safe[:, left + size - r:] = False
            interior &= ~inside | safe
    assert interior.float().mean() > 0.25  # the check covers a good part of the image
    assert torch.allclose(slide[0, :, interior], whole[0, :, interior], atol=1e-6)
    assert not torch.allclose(slide, whole, atol=1e-3)  # near cut edges windows do differ
    assert (slide.argmax(1) == whole.argmax(1)).float().mean() > 0.9


def test_window_larger_than_image_equals_whole_exactly():
    forward, x = tiny_fcn(), images(1, 30, 41)
    whole = predict_probs(forward, x)
    assert torch.equal(predict_probs(forward, x, mode="slide", window=(64, 64)), whole)
    assert torch.equal(predict_labels(forward, x, mode="slide", window=(30, 41)), whole.argmax(1))


def test_single_unit_scale_is_plain_prediction_and_repeated_scales_change_nothing():
    forward, x = tiny_fcn(), images(1, 33, 40)
    plain = predict_probs(forward, x)
    assert torch.equal(predict_probs(forward, x, scales=(1.0,)), plain)
    # Two identical scales go through the resampler (identity weights) and the average: still exact.
    assert torch.equal(predict_probs(forward, x, scales=(1.0, 1.0)), plain)
    local = LocalFCN()
    slide = predict_probs(local, x, mode="slide", window=(16, 16))
    assert torch.equal(predict_probs(local, x, mode="slide", window=(16, 16), scales=(1.0, 1.0)), slide)


def test_flip_with_a_flip_equivariant_forward_changes_nothing():
    forward, x = pointwise_forward(), images(2, 21, 34)
    assert torch.allclose(predict_probs(forward, x, flip=True), predict_probs(forward, x), atol=1e-6)
    # A symmetric 3x3 kernel is flip-equivariant too (zero padding is symmetric).
    conv = nn.Conv2d(3, C, 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_((conv.weight + conv.weight.flip(-1)) / 2 * 5)
    for mode in ("whole", "slide"):
        options = {"mode": mode, "window": (12, 16)}
        assert torch.allclose(predict_probs(conv, x, flip=True, **options), predict_probs(conv, x, **options),
                              atol=1e-6)


def test_flip_averages_with_the_mirrored_prediction():
    forward, x = tiny_fcn(), images(1, 28, 36)
    with torch.no_grad():
        expected = (torch.softmax(forward(x), 1) + torch.softmax(forward(x.flip(-1)), 1).flip(-1)) / 2
    flipped = predict_probs(forward, x, flip=True)
    assert torch.allclose(flipped, expected, atol=1e-6)
    assert not torch.allclose(flipped, predict_probs(forward, x), atol=1e-3)


def test_multi_scale_matches_resize_predict_resize_back():
    forward, x = tiny_fcn(), images(2, 30, 38)
    scales = (0.5, 1.0, 1.5)
    expected = 0
    with torch.no_grad():
        for scale in scales:
            size = (round(30 * scale), round(38 * scale))
            scaled = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            probs = torch.softmax(forward(scaled), 1)
            expected = expected + F.interpolate(probs, size=(30, 38), mode="bilinear", align_corners=False)
    expected = expected / len(scales)
    assert torch.allclose(predict_probs(forward, x, scales=scales), expected, atol=1e-6)


def test_multi_scale_slide_equals_multi_scale_whole_without_border_effects():
    forward, x = pointwise_forward(), images(1, 45, 37)
    options = {"scales": (0.75, 1.25, 2.0), "flip": True}
    whole = predict_probs(forward, x, **options)
    slide = predict_probs(forward, x, mode="slide", window=(14, 18), overlap=0.4, **options)
    assert torch.allclose(slide, whole, atol=1e-6)


@pytest.mark.parametrize("net,size,window,overlap,options", [
    (tiny_fcn, (40, 36), (20, 20), 1 / 3, {}),
    (LocalFCN, (53, 31), (20, 12), 0.5, {"flip": True}),
    (LocalFCN, (40, 40), (13, 17), 0.0, {}),
    (LocalFCN, (37, 45), (16, 16), 0.6, {"scales": (0.5, 1.0, 1.25)}),
])
def test_predict_labels_is_argmax_of_predict_probs(net, size, window, overlap, options):
    forward, x = net(), images(2, *size)
    for mode in ("whole", "slide"):
        kwargs = {"mode": mode, "window": window, "overlap": overlap, "batch_size": 3, **options}
        labels = predict_labels(forward, x, **kwargs)
        assert labels.dtype == torch.int64 and labels.shape == (2, *size)
        assert torch.equal(labels, predict_probs(forward, x, **kwargs).argmax(1))


def test_results_do_not_depend_on_batch_size():
    forward, x = LocalFCN(), images(3, 26, 30)
    for mode in ("whole", "slide"):
        one = predict_probs(forward, x, mode=mode, window=(12, 12), batch_size=1)
        many = predict_probs(forward, x, mode=mode, window=(12, 12), batch_size=5)
        assert torch.allclose(one, many, atol=1e-6)


class RecordingBuffer(inference._StripBuffer):
    rows: list[int] = []
    strips: list[int] = []

    def __init__(self, classes, rows, width, device):
        super().__init__(classes, rows, width, device)
        RecordingBuffer.rows.append(self.sums.shape[2])

    def averages(self, start, stop):
        out = super().averages(start, stop)
        RecordingBuffer.strips.append(out.shape[2])
        return out


def test_slide_labels_keep_memory_bounded_for_a_tall_image(monkeypatch):
    monkeypatch.setattr(inference, "_StripBuffer", RecordingBuffer)
    RecordingBuffer.rows, RecordingBuffer.strips = [], []
    forward, x = pointwise_forward(), images(1, 400, 12)
    window, overlap = (16, 16), 0.5  # stride 8
    labels = predict_labels(forward, x, mode="slide", window=window, overlap=overlap)
    assert RecordingBuffer.rows == [16]  # one buffer of window-height rows, however tall the image
    assert max(RecordingBuffer.strips) <= 8 and sum(RecordingBuffer.strips) == 400
    assert torch.equal(labels, predict_probs(forward, x).argmax(1))


def test_multi_scale_slide_keeps_few_rows(monkeypatch):
    held = []
    rows = inference._RowResampler.rows

    def recording_rows(self, start, stop):
        out = rows(self, start, stop)
        held.append(self.held.shape[2])
        return out

    monkeypatch.setattr(inference._RowResampler, "rows", recording_rows)
    forward, x = pointwise_forward(), images(1, 300, 10)
    labels = predict_labels(forward, x, mode="slide", window=(16, 16), overlap=0.5, scales=(0.5, 1.0, 1.5))
    assert 0 < max(held) <= 32  # source rows kept per scale, against 450 rows at scale 1.5
    assert torch.equal(labels, predict_probs(forward, x, scales=(0.5, 1.0, 1.5)).argmax(1))


def test_bad_arguments_are_refused_with_clear_messages():
    forward, x = pointwise_forward(), images(1, 8, 8)
    with pytest.raises(ValueError, match="unknown mode"):
        predict_probs(forward, x, mode="tiles")
    with pytest.raises(ValueError, match="overlap"):
        predict_probs(forward, x, mode="slide", overlap=1.0)
    with pytest.raises(ValueError, match="N x 3 x H x W"):
        predict_probs(forward, x[0])
    with pytest.raises(ValueError, match="normalised floats"):
        predict_labels(forward, x.to(torch.uint8))
    with pytest.raises(ValueError, match="scales"):
        predict_probs(forward, x, scales=(0.0,))
    with pytest.raises(ValueError, match="window"):
        predict_probs(forward, x, mode="slide", window=(0, 4))
    with pytest.raises(ValueError, match="at the input's size"):
        predict_probs(lambda t: t[:, :, ::2], x)
    for switch in ("flip", "bf16"):  # flip="no" is a true value: it flipped
        with pytest.raises(ValueError, match=f"{switch} must be True or False, got 'no'"):
            predict_probs(forward, x, **{switch: "no"})
        options = InferenceOptions(**{switch: np.bool_(True)})  # numpy's bool is a bool: taken, as Python's
        assert getattr(options, switch) is True
