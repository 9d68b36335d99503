"""The CPU kernels as Paddle functions: fused BatchNorm + ReLU (+ pooling), convolutions, pooling, concat."""
from __future__ import annotations

import logging

import paddle
import paddle.nn as nn

from paddle_chexnet.cpu import kernels
from paddle_chexnet.cpu.runtime import math_threads

logger = logging.getLogger(__name__)


def fused_path_applies(x: paddle.Tensor, norm: nn.Layer) -> bool:
    """True where :func:`batch_norm_relu` runs the fused CPU kernel rather than Paddle's two operators."""
    return (
        norm.training
        and type(norm) is nn.BatchNorm2D  # not SyncBatchNorm, not a subclass with other semantics
        and getattr(norm, "_data_format", "NCHW") == "NCHW"
        and not getattr(norm, "_use_global_stats", None)
        # one value per channel: Paddle then normalises with the running statistics; leave it to Paddle
        and (len(x.shape) != 4 or x.shape[0] * x.shape[2] * x.shape[3] > 1)
        and kernels_apply(x)
    )


def batch_norm_relu(x: paddle.Tensor, norm: nn.BatchNorm2D) -> paddle.Tensor:
    """``relu(norm(x))``, by the fused multi-threaded kernel where :func:`fused_path_applies`.

    In training mode it normalises with the batch statistics and updates
    ``norm``'s running mean and variance as Paddle's ``BatchNorm2D`` does.
    """
    if not fused_path_applies(x, norm):
        return paddle.nn.functional.relu(norm(x))
    return _with_running_statistics(norm, kernels.cpu_kernels().chexnet_bn_relu(*_batch_norm_arguments(x, norm)))


def _is_plain_2x2_average_pool(pool: nn.Layer) -> bool:
    return (
        type(pool) is nn.AvgPool2D
        and pool.ksize in (2, [2, 2], (2, 2))
        and pool.stride in (2, [2, 2], (2, 2))
        and pool.padding in (0, [0, 0], (0, 0))
        and not pool.ceil_mode
        and pool.divisor is None
        and pool.data_format == "NCHW"
    )


def batch_norm_relu_pool(x: paddle.Tensor, norm: nn.BatchNorm2D, pool: nn.Layer) -> paddle.Tensor:
    """``pool(relu(norm(x)))`` for a 2x2 stride-2 ``AvgPool2D``, fused where :func:`fused_path_applies`.

    The full-resolution output of the ReLU is never written; the backward pass
    recomputes its mask. Other pools, and shapes below 2x2, run Paddle's layers.
    """
    if not (fused_path_applies(x, norm) and _is_plain_2x2_average_pool(pool) and min(x.shape[2:]) >= 2):
        return pool(paddle.nn.functional.relu(norm(x)))
    return _with_running_statistics(norm, kernels.cpu_kernels().chexnet_bn_relu_pool(*_batch_norm_arguments(x, norm)))


def _batch_norm_arguments(x: paddle.Tensor, norm: nn.BatchNorm2D) -> tuple:
    return (x, norm.weight, norm.bias, norm._mean, norm._variance, float(norm._epsilon), float(norm._momentum),
            math_threads())


def _with_running_statistics(norm: nn.BatchNorm2D, outputs) -> paddle.Tensor:
    """Copy a fused kernel's updated running statistics into ``norm`` and return its output."""
    y, _mean, _invstd, running_mean, running_variance = outputs
    with paddle.no_grad():
        paddle.assign(running_mean, norm._mean)
        paddle.assign(running_variance, norm._variance)
    return y


def kernels_apply(*tensors: paddle.Tensor) -> bool:
    """True where the kernels can run on these tensors: 4-D float32 on the CPU, a dynamic graph, kernels built."""
    return (
        paddle.in_dynamic_mode()
        and all(t.place.is_cpu_place() and t.dtype == paddle.float32 and len(t.shape) == 4 for t in tensors)
        and kernels.cpu_kernels() is not None
    )


def conv3x3_kernel(x: paddle.Tensor, weight: paddle.Tensor) -> paddle.Tensor:
    """``F.conv2d(x, weight, padding=1)`` (stride 1, no bias) by the multi-threaded CPU kernel, with gradients."""
    return kernels.cpu_kernels().chexnet_conv3x3(x, weight, math_threads())


def conv_im2col_kernel(x: paddle.Tensor, weight: paddle.Tensor, stride: int, padding: int) -> paddle.Tensor:
    """``F.conv2d(x, weight, stride=stride, padding=padding)`` (no bias, groups 1) by per-image im2col + product.

    The input gradient is computed only when ``x`` needs one (the stem's input is the image).
    """
    return kernels.cpu_kernels().chexnet_conv_im2col(x, weight, stride, padding, not x.stop_gradient, math_threads())


def depthwise_conv_kernel(x: paddle.Tensor, weight: paddle.Tensor, stride: int, padding: int) -> paddle.Tensor:
    """``F.conv2d(x, weight, stride=stride, padding=padding, groups=C)`` (``weight [C, 1, k, k]``, no bias,
    stride 1 or 2) by the multi-threaded kernel, with gradients."""
    return kernels.cpu_kernels().chexnet_depthwise_conv(x, weight, stride, padding, math_threads())


def max_pool_kernel(x: paddle.Tensor, kernel: int, stride: int, padding: int) -> paddle.Tensor:
    """``F.max_pool2d(x, kernel, stride, padding)`` (NCHW, no ceil mode) by the multi-threaded kernel."""
    y, _indices = kernels.cpu_kernels().chexnet_max_pool(x, kernel, stride, padding, math_threads())
    return y


def concat_channels(pieces: list[paddle.Tensor]) -> paddle.Tensor:
    """``paddle.concat(pieces, axis=1)`` for NCHW maps, by the multi-threaded kernel where it applies."""
    if len(pieces) == 1:
        return pieces[0]
    if kernels_apply(*pieces):
        return kernels.cpu_kernels().chexnet_concat(list(pieces), math_threads())
    return paddle.concat(pieces, axis=1)
