"""DenseNet's convolution layers with faster CPU paths (same results to float rounding).

:class:`Conv3x3` and :class:`ThreadedConv2D` run the package's C++ kernels
(:mod:`paddle_chexnet.cpu.kernels`) on the CPU in dynamic graphs. Where those
cannot be built, :class:`Conv3x3` trains by the *fold path* below, the same
arrangement in Paddle operators:

Paddle's CPU convolution is im2col + matrix product, per image: the forward
pass copies the input 9 times over (``C_in x 9`` rows), and the backward pass
does it again for the weight gradient and scatters a ``C_in x 9`` matrix back
(col2im) for the input gradient. In a dense layer the 3x3 convolution maps
128 channels to 32, so all that copying is on the wide side. The same
arithmetic can be arranged so that only the narrow side (32 channels) is ever
expanded:

* forward:  ``Z = W' x`` (one product, ``9 C_out`` rows), then ``y = fold(Z)``,
  the 9 shifted copies of ``Z`` summed (col2im on ``C_out`` channels);
* backward: ``U = unfold(dy)`` (im2col on ``C_out`` channels), then
  ``dx = W''^T U`` and ``dW = U x^T``, with no expansion of ``x`` at all.

``W'`` and ``W''`` are the weight flipped in space and laid out to match the
(channel, row, column) order of fold/unfold. On the machine of BENCHMARKS.md
the 3x3 convolutions of DenseNet-121's first two blocks (56x56 and 28x28 maps)
take 0.43 s forward + backward this way against 0.67 s with Paddle's kernel
(batch 4, one thread, ``benchmarks/bench_conv.py``); at 14x14 and below the
matrices are small and Paddle's kernel is as fast or faster, so it keeps them.
The fold path is used only on the CPU, in dynamic graphs, when a gradient is
wanted; static graphs (``to_static``, exported models) and GPUs keep
``paddle.nn.functional.conv2d``.
"""
from __future__ import annotations

import paddle
import paddle.nn as nn

from paddle_chexnet.cpu import fold
from paddle_chexnet.cpu.ops import (
    conv3x3_kernel,
    conv_im2col_kernel,
    kernels_apply,
    max_pool_kernel,
)


class Conv3x3(nn.Conv2D):
    """A ``nn.Conv2D(C_in, C_out, 3, padding=1, bias_attr=False)`` with faster CPU paths.

    On the CPU in a dynamic graph it runs the multi-threaded kernel of
    :mod:`paddle_chexnet.cpu.kernels` (the same arrangement as the fold path,
    in C++, each thread on its own images); where that kernel cannot be built,
    training takes the fold path above on maps of 28x28 and larger. Same
    parameter (``weight``), same state-dict key, same result to float rounding.
    """

    def __init__(self, in_channels: int, out_channels: int, weight_attr=None) -> None:
        super().__init__(in_channels, out_channels, 3, padding=1, weight_attr=weight_attr, bias_attr=False)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        if kernels_apply(x, self.weight):
            return conv3x3_kernel(x, self.weight)
        if fold.fold_path_applies(x, self.weight):
            return fold.conv3x3_fold(x, self.weight)
        return super().forward(x)


def _square(value, name: str) -> int:
    """An int from Paddle's int-or-pair convolution arguments, where both entries are equal."""
    values = [value] * 2 if isinstance(value, int) else list(value)
    if len(values) != 2 or values[0] != values[1]:
        raise ValueError(f"{name} must be one int or two equal ints for the CPU kernel, got {value!r}")
    return int(values[0])


class ThreadedConv2D(nn.Conv2D):
    """A bias-free ``nn.Conv2D`` (groups 1, dilation 1) that runs the multi-threaded im2col kernel on the CPU.

    DenseNet uses it for the stem (7x7, stride 2), where Paddle's one-thread
    im2col of the 224x224 image took most of the convolution's time. Same
    parameter, same state-dict key, same arithmetic (im2col + one product per
    image; results equal Paddle's to float rounding). GPUs, static graphs and
    other layouts run ``nn.Conv2D``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 weight_attr=None) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                         weight_attr=weight_attr, bias_attr=False)
        self._kernel_stride = _square(stride, "stride")
        self._kernel_padding = _square(padding, "padding")

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        if self._data_format == "NCHW" and kernels_apply(x, self.weight):
            return conv_im2col_kernel(x, self.weight, self._kernel_stride, self._kernel_padding)
        return super().forward(x)


class ThreadedMaxPool2D(nn.MaxPool2D):
    """``nn.MaxPool2D(kernel_size, stride, padding)`` that runs the multi-threaded kernel on the CPU.

    Paddle's CPU max pooling runs on one thread; on DenseNet's stem
    ([8, 64, 112, 112] at batch 8) forward + backward took 20 ms against 5 ms
    here (``benchmarks/bench_kernels.py``). The result and the gradient are Paddle's exactly: the maximum, and
    the gradient to the first maximum of each window, row by row. Other
    devices, static graphs, ``ceil_mode`` and ``return_mask`` run ``nn.MaxPool2D``.
    """

    def __init__(self, kernel_size: int, stride: int, padding: int = 0) -> None:
        super().__init__(kernel_size, stride=stride, padding=padding)
        self._sizes = (int(kernel_size), int(stride), int(padding))

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        if not self.ceil_mode and not self.return_mask and self.data_format == "NCHW" and kernels_apply(x):
            return max_pool_kernel(x, *self._sizes)
        return super().forward(x)
