"""Max pooling on the CPU by the package's multi-threaded kernel (DenseNet's stem pooling)."""
from __future__ import annotations

import paddle
import paddle.nn as nn

from .cpu_kernels import kernels_apply, max_pool_kernel


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
