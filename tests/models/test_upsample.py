import pytest
import torch
from torch import nn

from fcnseg.models.upsample import Upsample, bilinear_kernel


def test_kernel_4_matches_the_reference_formula():
    axis = torch.tensor([0.25, 0.75, 0.75, 0.25])
    assert torch.equal(bilinear_kernel(4), axis[:, None] * axis[None, :])


def test_odd_kernel_peaks_at_one():
    assert torch.equal(bilinear_kernel(3)[1], torch.tensor([0.5, 1.0, 0.5]))
    assert bilinear_kernel(5)[2, 2] == 1.0


@pytest.mark.parametrize("stride", [2, 8, 16, 32])
def test_kernel_2s_sums_to_stride_squared(stride):
    # Each output pixel gets unit total weight: a x`stride` kernel covers stride^2 outputs per input.
    kernel = bilinear_kernel(2 * stride)
    assert kernel.sum().item() == pytest.approx(stride * stride)
    assert torch.equal(kernel, kernel.flip(0)) and torch.equal(kernel, kernel.T)


@pytest.mark.parametrize("learnable", [True, False])
def test_weights_only_on_the_diagonal(learnable):
    up = Upsample(3, 2, learnable=learnable)
    full = up.full_weight()
    assert full.shape == (3, 3, 4, 4)
    for i in range(3):
        for j in range(3):
            expected = bilinear_kernel(4) if i == j else torch.zeros(4, 4)
            assert torch.equal(full[i, j], expected)
    assert up.weight.requires_grad is learnable


def test_frozen_and_learnable_compute_the_same():
    x = torch.randn(2, 5, 6, 7)
    a, b = Upsample(5, 8, learnable=True), Upsample(5, 8, learnable=False)
    torch.testing.assert_close(a(x), b(x), atol=1e-5, rtol=0)


def test_linear_ramp_is_interpolated_exactly():
    # Bilinear interpolation reproduces a linear function away from the borders.
    ramp = torch.arange(6, dtype=torch.float32).view(1, 1, 1, 6).expand(1, 1, 6, 6).contiguous()
    out = Upsample(1, 2)(ramp)  # output index m sits at input position (m - 1.5) / 2
    positions = (torch.arange(out.shape[-1], dtype=torch.float32) - 1.5) / 2
    interior = slice(2, out.shape[-1] - 2)
    torch.testing.assert_close(out[0, 0, 5, interior], positions[interior])


def test_same_padding_keeps_exact_multiple():
    assert Upsample(2, 2, padding=1)(torch.zeros(1, 2, 5, 7)).shape[-2:] == (10, 14)
    assert Upsample(2, 32, padding=16)(torch.zeros(1, 2, 3, 1)).shape[-2:] == (96, 32)


def test_frozen_layer_refuses_class_mixing_kernels():
    up = Upsample(2, 2)
    mixing = torch.rand(2, 2, 4, 4)
    with pytest.raises(ValueError, match="learnable_upsampling=True"):
        up.load_full_weight(mixing)
    diagonal = torch.zeros(2, 2, 4, 4)
    diagonal[0, 0], diagonal[1, 1] = 1.0, 2.0
    up.load_full_weight(diagonal)
    assert torch.equal(up.full_weight(), diagonal)


@pytest.mark.parametrize("stride, padding", [(2, 0), (8, 0), (8, 4)])
def test_the_dense_path_a_gpu_takes_is_the_depthwise_function(stride, padding):
    # On CUDA a frozen upsampler convolves with its full kernel (cuDNN's grouped kernel is slow): the same sums.
    torch.manual_seed(0)
    layer = Upsample(5, stride, padding=padding)
    with torch.no_grad():
        layer.weight.mul_(torch.rand(5, 1, 1, 1) + 0.5)  # each class its own kernel: the diagonal must follow
    x = torch.randn(2, 5, 7, 9)
    torch.testing.assert_close(layer.dense_forward(x), nn.ConvTranspose2d.forward(layer, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("learnable, stride, padding", [(False, 8, 0), (False, 8, 4), (True, 2, 1)])
def test_bf16_on_the_cpu_upsamples_in_float32(learnable, stride, padding):
    # The CPU's bf16 transposed convolution has no fast kernel (10-50x slower than float32, AMX included), so
    # under autocast the layer computes in float32 from the bf16 scores it is given, and says so by its dtype.
    torch.manual_seed(0)
    layer = Upsample(3, stride, learnable=learnable, padding=padding)
    x = torch.randn(2, 3, 5, 6, requires_grad=True)
    scores = x.bfloat16()  # what autocast's convolutions hand over
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(scores)
    expected = nn.ConvTranspose2d.forward(layer, scores.detach().float())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    out.square().sum().backward()  # gradients still reach the input (and a learnable kernel, in float32)
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert not learnable or layer.weight.grad.dtype == torch.float32
    # A net cast to bf16 (no autocast) gets bf16 back, computed the same way.
    half = Upsample(3, stride, learnable=learnable, padding=padding).bfloat16()
    with torch.no_grad():
        assert torch.equal(half(scores.detach()), expected.detach().bfloat16())
