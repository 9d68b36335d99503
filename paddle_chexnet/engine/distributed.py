"""Helpers for runs under ``python -m paddle.distributed.launch`` (several GPUs, or CPU processes on gloo).

The distributed engine is Paddle's own: ``paddle.Model`` wraps the network in
``paddle.DataParallel`` when it sees more than one process, and averages the
gradients. This module only adds what training needs around it: who writes
files (rank 0), sums over processes, and one copy of BatchNorm statistics.
"""
from __future__ import annotations

import logging
import os

import numpy as np
import paddle
import paddle.distributed as dist

logger = logging.getLogger(__name__)


def world_size() -> int:
    """Number of training processes (1 when not launched by ``paddle.distributed.launch``)."""
    return dist.get_world_size()


def rank() -> int:
    """This process's rank (0 when not distributed)."""
    return dist.get_rank()


def is_main_process() -> bool:
    """True on the process that writes logs and checkpoints (rank 0)."""
    return rank() == 0


def all_reduce_sum(values: np.ndarray) -> np.ndarray:
    """Sum a small float64 array over all processes (identity with one process)."""
    values = np.asarray(values, dtype=np.float64)
    if world_size() == 1:
        return values
    tensor = paddle.to_tensor(values)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.numpy()


def broadcast_buffers(network: paddle.nn.Layer, src: int = 0) -> None:
    """Give every process rank ``src``'s non-trainable state (BatchNorm running mean and variance).

    ``paddle.DataParallel`` averages gradients, so trainable parameters stay
    equal, but each process updates BatchNorm statistics from its own shard of
    the batch. (Paddle keeps them as parameters with ``stop_gradient=True``,
    not as buffers.) Broadcasting them before validation makes every process
    evaluate the same model: the one rank 0 saves.
    """
    if world_size() == 1:
        return
    for tensor in network.state_dict().values():
        if tensor.stop_gradient:
            dist.broadcast(tensor, src=src)


def use_cpu_backend(device: str) -> None:
    """On the CPU, make the processes of a distributed run talk over gloo (``PADDLE_DISTRI_BACKEND``).

    ``paddle.distributed.launch`` sets gloo only when Paddle has no CUDA; on a CUDA
    build Paddle otherwise picks NCCL, which needs the GPU the run was told not to
    use. Call it after choosing the device and before ``paddle.Model`` (which starts
    the process group). Nothing changes for one process or a GPU device.
    """
    if world_size() > 1 and device == "cpu" and os.environ.get("PADDLE_DISTRI_BACKEND") != "gloo":
        logger.debug("device cpu: PADDLE_DISTRI_BACKEND=gloo (was %s)", os.environ.get("PADDLE_DISTRI_BACKEND"))
        os.environ["PADDLE_DISTRI_BACKEND"] = "gloo"
