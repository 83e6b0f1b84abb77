"""Learnable upsampling: transposed convolutions initialised to bilinear interpolation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fcnseg.errors import WeightsError


def bilinear_kernel(size: int) -> torch.Tensor:
    """The 2-D bilinear interpolation kernel of side ``size`` (the reference's ``upsample_filt``).

    factor f = (k + 1) // 2, centre c = f - 1 for odd k else f - 0.5,
    w[i, j] = (1 - |i - c| / f) * (1 - |j - c| / f). For k = 4 each axis is [0.25, 0.75, 0.75, 0.25].
    """
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    axis = 1 - (torch.arange(size, dtype=torch.float64) - center).abs() / factor
    return (axis[:, None] * axis[None, :]).float()


class Upsample(nn.ConvTranspose2d):
    """x``stride`` upsampling of ``channels`` score maps: a transposed convolution, kernel 2*stride (or
    ``kernel``: the authors' FCN-AlexNet upsamples x32 with 63), no bias.

    ``learnable=True`` gives the paper's full ``channels x channels`` kernel (bilinear on the diagonal, zero
    elsewhere), trained with the net. ``learnable=False`` (the reference nets' frozen deconvolutions)
    stores only the diagonal as a depthwise kernel (``groups=channels``): the same function at
    1/channels of the cost, with no gradient. ``padding=stride // 2`` centres the output on the input
    grid ("same" upsampling, used by the fast geometry); the reference nets use ``padding=0`` and crop.
    """

    def __init__(self, channels: int, stride: int, learnable: bool = False, padding: int = 0,
                 kernel: int | None = None) -> None:
        groups = 1 if learnable else channels
        super().__init__(channels, channels, kernel_size=kernel or 2 * stride, stride=stride, padding=padding,
                         groups=groups, bias=False)
        self.learnable = learnable
        self.reset_parameters_bilinear()
        self.weight.requires_grad_(learnable)

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if self.groups != 1 and x.is_cuda and output_size is None:
            return self.dense_forward(x)
        if x.device.type == "cpu" and (x.dtype == torch.bfloat16 or torch.is_autocast_enabled("cpu")):
            return self.float32_forward(x, output_size)
        return super().forward(x, output_size)

    def float32_forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        """The upsampling in float32, for bfloat16 input or under CPU autocast.

        The CPU's bfloat16 transposed convolution has no fast kernel, even with AMX: the reference FCN-8s'
        x8 upsampling at 500x500 took 77 ms in bf16 and 5 ms in float32, FCN-32s' x32 427 ms and 6 ms (one
        thread, Intel Xeon with AMX; benchmarks/upsample_bf16.py, docs/performance.md). Under autocast the
        result stays float32, as the results of autocast's float32 ops do; a bfloat16 net gets bfloat16 back.
        """
        with torch.autocast("cpu", enabled=False):
            weight = self.weight.float()
            output_padding = self._output_padding(x, output_size, self.stride, self.padding, self.kernel_size, 2,
                                                  self.dilation)
            out = F.conv_transpose2d(x.float(), weight, None, self.stride, self.padding, output_padding,
                                     self.groups, self.dilation)
        return out if torch.is_autocast_enabled("cpu") else out.to(x.dtype)

    def dense_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen (depthwise) upsampling computed with the full ``channels x channels`` kernel.

        cuDNN's grouped transposed convolution is slow for large kernels: FCN-8s' x8 upsampling of 8 x 21
        x 70 x 70 scores took 10.2 ms grouped and 0.9 ms dense on an H200 (float32; 4.5 ms and 0.6 ms in
        float16), a third of the whole net's time (docs/gpu.md). The same sums, so the same function.
        """
        return F.conv_transpose2d(x, self.full_weight(), stride=self.stride, padding=self.padding)

    def reset_parameters_bilinear(self) -> None:
        """Write the bilinear kernel on the channel diagonal (channel c to channel c only)."""
        kernel = bilinear_kernel(self.kernel_size[0])
        with torch.no_grad():
            self.weight.zero_()
            if self.groups == 1:
                for c in range(self.in_channels):
                    self.weight[c, c] = kernel
            else:
                self.weight[:, 0] = kernel

    def reset_parameters(self) -> None:  # called by nn.ConvTranspose2d.__init__ before our attributes exist
        if hasattr(self, "learnable"):
            self.reset_parameters_bilinear()

    def full_weight(self) -> torch.Tensor:
        """The kernel in the reference layout (channels x channels x k x k), whichever way it is stored."""
        if self.groups == 1:
            return self.weight.detach()
        full = self.weight.new_zeros(self.in_channels, self.out_channels, *self.kernel_size)
        idx = torch.arange(self.in_channels, device=full.device)
        full[idx, idx] = self.weight.detach()[:, 0]
        return full

    def load_full_weight(self, weight: torch.Tensor, name: str = "upsampling") -> None:
        """Load a reference-layout (C x C x k x k) kernel. A frozen (depthwise) layer accepts only kernels
        that are zero off the diagonal, as the authors' frozen bilinear ones are. The kernel is assigned,
        not copied, so this works on a layer built on the ``meta`` device too."""
        expected = (self.in_channels, self.out_channels, *self.kernel_size)
        if tuple(weight.shape) != expected:
            raise WeightsError(f"{name}: kernel of shape {tuple(weight.shape)} does not fit {expected}")
        weight = weight.detach().to(torch.float32)
        if self.groups != 1:
            idx = torch.arange(self.in_channels)
            off_diagonal = weight.clone()
            off_diagonal[idx, idx] = 0
            if off_diagonal.abs().max() > 0:
                raise WeightsError(f"{name}: the kernel mixes classes (non-zero off the diagonal); build the "
                                   "model with learnable_upsampling=True to load it")
            weight = weight[idx, idx][:, None].contiguous()
        self.weight = nn.Parameter(weight, requires_grad=self.learnable)
