"""CPU math settings that decide how fast Paddle trains and predicts on a CPU.

Two things, both measured on a 2-core AMD EPYC (BENCHMARKS.md, "What made the
CPU step fast"):

* **Math threads.** Paddle starts with one math-library thread
  (``FLAGS_paddle_num_threads`` = 1), so a plain ``python train.py`` used one
  core whatever the machine had. :func:`configure_cpu` gives each process the
  cores it may use, divided among the processes
  ``paddle.distributed.launch`` started on this machine.
* **MKL on AMD processors.** The MKL that Paddle's wheel bundles (2019.0.5)
  runs its generic SSE code on processors that are not Intel's; with
  ``MKL_DEBUG_CPU_TYPE=5`` (honoured by MKL up to 2020.0) it runs its AVX2
  code instead: the training step of DenseNet-121 ran 2.1x faster
  (``benchmarks/bench_train.py``, variant ``paddle_eager_mkl_default``). The
  variable is read at MKL's first matrix product, so the package sets it when
  it is imported (``paddle_chexnet/__init__.py``); it never overrides a value
  the user gave. Every process then runs the same code path, which matters
  beyond speed: the two paths round differently, and after an Adam step (which
  divides by the gradient's size) the difference is visible in the weights.
"""
from __future__ import annotations

import logging
import os
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

MKL_CPU_TYPE_VARIABLE = "MKL_DEBUG_CPU_TYPE"
MKL_AVX2_CPU_TYPE = "5"


@dataclass(frozen=True)
class CpuSettings:
    """What :func:`configure_cpu` chose: math threads and the MKL code path (``None``: MKL's own choice)."""

    threads: int
    mkl_cpu_type: str | None


def cpu_vendor(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """The processor's vendor id (``'GenuineIntel'``, ``'AuthenticAMD'``), or ``''`` where unknown."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "vendor_id":
            return value.strip()
    return ""


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the system tells it)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def local_process_count(environ: MutableMapping[str, str] = os.environ) -> int:
    """Training processes ``paddle.distributed.launch`` started on this machine (1 without it)."""
    try:
        return max(1, int(environ.get("PADDLE_LOCAL_SIZE", "1")))
    except ValueError:
        return 1


def default_threads(environ: MutableMapping[str, str] = os.environ) -> int:
    """This process's share of the cores: all of them, divided among the local training processes."""
    return max(1, usable_cores() // local_process_count(environ))


def use_mkl_avx2_on_amd(environ: MutableMapping[str, str] = os.environ, vendor: str | None = None) -> str | None:
    """Ask MKL for its AVX2 code on AMD processors unless the user set ``MKL_DEBUG_CPU_TYPE``.

    Returns:
        str | None: the value MKL will see, or ``None`` when it is left to pick by itself.
    """
    if MKL_CPU_TYPE_VARIABLE in environ:
        return environ[MKL_CPU_TYPE_VARIABLE]
    if (cpu_vendor() if vendor is None else vendor) != "AuthenticAMD":
        return None
    environ[MKL_CPU_TYPE_VARIABLE] = MKL_AVX2_CPU_TYPE
    return MKL_AVX2_CPU_TYPE


def configure_cpu(threads: int | None = None) -> CpuSettings:
    """Set Paddle's CPU math threads and MKL's code path; call before the first computation.

    Args:
        threads (int, optional): math threads for this process; ``None`` uses
            :func:`default_threads`. Default: None.

    Raises:
        ValueError: ``threads`` is smaller than 1.
    """
    if threads is not None and threads < 1:
        raise ValueError(f"the number of CPU threads must be at least 1, got {threads}")
    mkl_cpu_type = use_mkl_avx2_on_amd()
    import paddle

    threads = threads or default_threads()
    paddle.base.core.set_num_threads(threads)  # MKL's threads (tests/test_cpu_runtime.py checks them)
    logger.debug("CPU math: %d thread(s), %s=%s", threads, MKL_CPU_TYPE_VARIABLE, mkl_cpu_type)
    return CpuSettings(threads=threads, mkl_cpu_type=mkl_cpu_type)
