"""The fold path: 3x3 convolutions where only the narrow side is expanded, in Paddle operators."""
from __future__ import annotations

import paddle
import paddle.nn.functional as F
from paddle.autograd import PyLayer

# The fold path pays off from 28x28 feature maps up (BENCHMARKS.md).
MIN_PIXELS = 28 * 28


class _Conv3x3Fold(PyLayer):
    """3x3 convolution, stride 1, padding 1, no bias, by product + fold; gradients by unfold + products."""

    @staticmethod
    def forward(ctx, x: paddle.Tensor, weight: paddle.Tensor) -> paddle.Tensor:
        batch, in_channels, height, width = x.shape
        out_channels = weight.shape[0]
        # rows ordered (out channel, kernel row, kernel column) as fold expects, kernel flipped
        rows = paddle.flip(weight, [2, 3]).transpose([0, 2, 3, 1]).reshape([out_channels * 9, in_channels])
        shifted = paddle.matmul(rows, x.reshape([batch, in_channels, height * width]))
        ctx.save_for_backward(x, weight)
        ctx.needs = (not x.stop_gradient, not weight.stop_gradient)
        return F.fold(shifted, [height, width], [3, 3], paddings=1)

    @staticmethod
    def backward(ctx, grad_out: paddle.Tensor):
        x, weight = ctx.saved_tensor()
        batch, in_channels, height, width = x.shape
        out_channels = weight.shape[0]
        columns = F.unfold(grad_out, [3, 3], paddings=1)  # [B, C_out * 9, H * W]
        grad_x = grad_weight = None
        if ctx.needs[0]:
            flipped = paddle.flip(weight, [2, 3]).transpose([1, 0, 2, 3]).reshape([in_channels, out_channels * 9])
            grad_x = paddle.matmul(flipped, columns).reshape([batch, in_channels, height, width])
        if ctx.needs[1]:
            products = paddle.matmul(columns, x.reshape([batch, in_channels, height * width]), transpose_y=True)
            grad_weight = paddle.flip(products.sum(0).reshape([out_channels, 3, 3, in_channels]), [1, 2])
            grad_weight = grad_weight.transpose([0, 3, 1, 2])
        return grad_x, grad_weight


def conv3x3_fold(x: paddle.Tensor, weight: paddle.Tensor) -> paddle.Tensor:
    """``F.conv2d(x, weight, padding=1)`` for a ``[C_out, C_in, 3, 3]`` weight, computed as the module says."""
    return _Conv3x3Fold.apply(x, weight)


def fold_path_applies(x: paddle.Tensor, weight: paddle.Tensor) -> bool:
    """True where :func:`conv3x3_fold` is the faster way: CPU, dynamic graph, a gradient wanted, >= 28x28."""
    return (
        paddle.in_dynamic_mode()
        and x.place.is_cpu_place()
        and paddle.is_grad_enabled()
        and not (x.stop_gradient and weight.stop_gradient)
        and x.shape[2] * x.shape[3] >= MIN_PIXELS
    )
