"""Choosing where to run: the GPU when Paddle was built with CUDA and sees one, else the CPU.

:func:`prepare_device` is what the commands call: it picks and sets the device,
says which in the log, and applies the CPU settings of
:mod:`paddle_chexnet.cpu.runtime` only when the work runs on the CPU.
"""
from __future__ import annotations

import logging
import os
import shutil

import paddle

logger = logging.getLogger(__name__)


def gpu_available() -> bool:
    """True when this Paddle build has CUDA and at least one GPU is visible."""
    return paddle.device.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0


def nvidia_gpu_present() -> bool:
    """True when the machine shows an NVIDIA GPU (``nvidia-smi`` or ``/dev/nvidia0``), whatever Paddle sees."""
    return os.path.exists("/dev/nvidia0") or shutil.which("nvidia-smi") is not None


def select_device(requested: str = "auto") -> str:
    """Set and return Paddle's device: ``'auto'`` (a GPU if Paddle sees one), ``'cpu'``, ``'gpu'`` or ``'gpu:N'``.

    Raises:
        ValueError: a GPU was requested but this Paddle build or machine has none (the message says how to
            install ``paddlepaddle-gpu``), or the name is unknown; ``gpu:N`` under
            ``paddle.distributed.launch`` with several processes (all would share GPU N).
    """
    requested = requested.lower()
    processes = int(os.environ.get("PADDLE_TRAINERS_NUM", "1") or 1)
    if requested.startswith("gpu:") and processes > 1:
        from paddle_chexnet.errors import UserError

        raise UserError(
            f"--device {requested} would put all {processes} processes of this distributed run on one GPU; use "
            "--device gpu (each process then takes the GPU paddle.distributed.launch gives it) and choose the "
            "GPUs with launch's --gpus"
        )
    if requested == "auto":
        requested = "gpu" if gpu_available() else "cpu"
    if not (requested == "cpu" or requested == "gpu" or (requested.startswith("gpu:") and requested[4:].isdigit())):
        raise ValueError(f"unknown device {requested!r}; use auto, cpu, gpu or gpu:N")
    if requested.startswith("gpu") and not gpu_available():
        raise ValueError(
            f"device {requested!r} requested, but this Paddle build sees no GPU "
            f"(compiled with CUDA: {paddle.device.is_compiled_with_cuda()}). Install paddlepaddle-gpu "
            "following https://www.paddlepaddle.org.cn/install/quick, or use --device cpu."
        )
    paddle.set_device(requested)
    return requested


def prepare_device(requested: str = "auto", cpu_threads: int | None = None) -> str:
    """:func:`select_device`, then (CPU only) :func:`~paddle_chexnet.cpu.runtime.configure_cpu`; logs the choice.

    Args:
        requested (str, optional): as :func:`select_device`. Default: 'auto'.
        cpu_threads (int, optional): math threads for CPU work; ``None``: this process's share of
            the cores. Default: None.
    """
    device = select_device(requested)
    if device == "cpu":
        from paddle_chexnet.cpu.runtime import configure_cpu

        settings = configure_cpu(cpu_threads)
        if requested.lower() == "auto" and paddle.device.is_compiled_with_cuda() is False and nvidia_gpu_present():
            logger.warning("an NVIDIA GPU is present but this Paddle is a CPU build (is paddlepaddle installed "
                           "over paddlepaddle-gpu?); running on the CPU. See the README's GPU section.")
        logger.info("device: cpu, %d math thread(s)%s", settings.threads,
                    f", MKL code path {settings.mkl_cpu_type}" if settings.mkl_cpu_type else "")
    else:
        index = paddle.distributed.ParallelEnv().dev_id if requested.lower() in ("auto", "gpu") else device[4:]
        logger.info("device: %s (%s)", device, paddle.device.cuda.get_device_name(int(index or 0)))
    return device
