"""Choosing where to run: the GPU when Paddle was built with CUDA and sees one, else the CPU."""
from __future__ import annotations

import paddle

from paddle_chexnet.cpu.runtime import configure_cpu


def gpu_available() -> bool:
    """True when this Paddle build has CUDA and at least one GPU is visible."""
    return paddle.device.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0


def select_device(requested: str = "auto", cpu_threads: int | None = None) -> str:
    """Set and return Paddle's device, and the CPU math settings (:func:`~paddle_chexnet.cpu_runtime.configure_cpu`).

    Args:
        requested (str, optional): ``'auto'`` (GPU if present), ``'cpu'``, ``'gpu'`` or
            ``'gpu:N'``. Default: 'auto'.
        cpu_threads (int, optional): math threads for CPU operators; ``None``: this process's
            share of the cores. Default: None.

    Raises:
        ValueError: a GPU was requested but this Paddle build or machine has none;
            the message says how to install ``paddlepaddle-gpu``.
    """
    requested = requested.lower()
    if requested == "auto":
        requested = "gpu" if gpu_available() else "cpu"
    if requested.startswith("gpu") and not gpu_available():
        raise ValueError(
            f"device {requested!r} requested, but this Paddle build sees no GPU "
            f"(compiled with CUDA: {paddle.device.is_compiled_with_cuda()}). Install paddlepaddle-gpu "
            "following https://www.paddlepaddle.org.cn/install/quick, or use --device cpu."
        )
    if not (requested == "cpu" or requested.startswith("gpu")):
        raise ValueError(f"unknown device {requested!r}; use auto, cpu, gpu or gpu:N")
    configure_cpu(cpu_threads)
    paddle.set_device(requested)
    return requested
