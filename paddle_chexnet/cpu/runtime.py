"""CPU settings that decide how fast Paddle trains and predicts on a CPU.

The commands apply them with :func:`configure_cpu` (through
:func:`~paddle_chexnet.utils.device.prepare_device`) when the work runs on the
CPU, never for a GPU run and never at import. What each is worth is measured
by ``benchmarks/bench_train.py`` and ``benchmarks/bench_kernels.py``
(BENCHMARKS.md; docs/cpu-speed.md explains them).

* **Math threads.** Paddle starts with one math-library thread
  (``FLAGS_paddle_num_threads`` = 1). :func:`configure_cpu` gives each process
  the cores it may use, divided among the processes ``paddle.distributed.launch``
  started on this machine.
* **MKL on AMD processors.** The MKL that Paddle's wheel bundles (2019.0.5)
  runs its generic SSE code on processors that are not Intel's. The variable
  ``MKL_DEBUG_CPU_TYPE`` (honoured by MKL up to 2020.0) makes it run the code
  for an instruction set the processor has: ``5`` its AVX2 kernels, ``7`` its
  AVX-512 kernels for Skylake-SP (which need AVX512 F, CD, BW, DQ and VL, as
  AMD's Zen 4 and later have). The choice is made from the processor's flags
  in ``/proc/cpuinfo``: a type the processor cannot run ends the process with an
  illegal instruction, so without the flags nothing is set (``6`` selects Xeon
  Phi kernels and ``8`` faults on Zen 5: neither is used). MKL reads the
  variable at its first matrix product, so it is set before any computation,
  and never over a value the user gave. Every process of a run takes the same
  path, which matters beyond speed: the paths round differently, and after an
  Adam step the difference is visible in the weights.
* **Freed tensors stay in the heap.** glibc's ``malloc`` serves large blocks by
  ``mmap`` and returns them to the system when freed, so large activations are
  faulted in again page by page at every step. :func:`keep_freed_memory` raises
  the mmap threshold to 256 MB and the trim threshold to 1 GB (``mallopt``), so
  freed blocks are reused. Peak memory is unchanged. ``MALLOC_*_`` variables
  that the user set win.
"""
from __future__ import annotations

import ctypes
import logging
import os
import platform
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path

from paddle_chexnet.utils.system import usable_cores

logger = logging.getLogger(__name__)


MKL_CPU_TYPE_VARIABLE = "MKL_DEBUG_CPU_TYPE"


MKL_AVX2_CPU_TYPE = "5"


MKL_AVX512_CPU_TYPE = "7"


# the processor flags each of MKL's code paths executes (a missing one: SIGILL)
AVX2_FLAGS = frozenset({"avx2", "fma"})


AVX512_FLAGS = AVX2_FLAGS | {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"}


# the math threads configure_cpu gave this process (Paddle's own default is one)
_configured_threads = 1


@dataclass(frozen=True)
class CpuSettings:
    """What :func:`configure_cpu` chose: math threads, the MKL code path (``None``: MKL's own choice)
    and whether freed memory stays in the heap (:func:`keep_freed_memory`)."""

    threads: int
    mkl_cpu_type: str | None
    heap_keeps_freed_memory: bool = False


# glibc's mallopt parameters (malloc.h) and the values keep_freed_memory sets
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


MMAP_THRESHOLD_BYTES = 256 << 20


TRIM_THRESHOLD_BYTES = 1 << 30


MALLOC_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")


def keep_freed_memory(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Make glibc keep freed blocks up to 256 MB in the heap for reuse, instead of unmapping them.

    Returns:
        bool: True where it was set; False off glibc, or where the user set a ``MALLOC_*_`` variable.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    if any(name in environ for name in MALLOC_VARIABLES):
        return False
    try:
        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
            libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
    except (OSError, AttributeError):
        return False


def _cpuinfo_field(name: str, cpuinfo: str | Path) -> str:
    """The first processor's ``name`` line of ``/proc/cpuinfo``, or ``''`` where unknown."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == name:
            return value.strip()
    return ""


def cpu_vendor(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """The processor's vendor id (``'GenuineIntel'``, ``'AuthenticAMD'``), or ``''`` where unknown."""
    return _cpuinfo_field("vendor_id", cpuinfo)


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """The instruction-set flags the processor reports (``avx2``, ``avx512f``, ...); empty where unknown."""
    return frozenset(_cpuinfo_field("flags", cpuinfo).split())


def mkl_cpu_type_for(vendor: str, flags: frozenset[str]) -> str | None:
    """The ``MKL_DEBUG_CPU_TYPE`` that runs MKL's fastest safe kernels, or ``None`` to leave MKL alone.

    Only AMD processors need it (on Intel's, MKL picks its kernels itself); the
    AVX-512 kernels where every flag they use is there, else the AVX2 ones.
    """
    if vendor != "AuthenticAMD":
        return None
    if AVX512_FLAGS <= flags:
        return MKL_AVX512_CPU_TYPE
    if AVX2_FLAGS <= flags:
        return MKL_AVX2_CPU_TYPE
    return None


def local_process_count(environ: MutableMapping[str, str] = os.environ) -> int:
    """Training processes ``paddle.distributed.launch`` started on this machine (1 without it)."""
    try:
        return max(1, int(environ.get("PADDLE_LOCAL_SIZE", "1")))
    except ValueError:
        return 1


def default_threads(environ: MutableMapping[str, str] = os.environ) -> int:
    """This process's share of the cores: all of them, divided among the local training processes."""
    return max(1, usable_cores() // local_process_count(environ))


def use_fast_mkl_on_amd(
    environ: MutableMapping[str, str] = os.environ,
    vendor: str | None = None,
    flags: frozenset[str] | None = None,
) -> str | None:
    """Ask MKL for its AVX-512 or AVX2 code on AMD processors unless the user set ``MKL_DEBUG_CPU_TYPE``.

    Args:
        environ (MutableMapping, optional): where the variable is read and set. Default: ``os.environ``.
        vendor (str, optional): the processor's vendor; ``None`` reads ``/proc/cpuinfo``. Default: None.
        flags (frozenset[str], optional): its instruction-set flags; ``None`` reads ``/proc/cpuinfo``.
            Default: None.

    Returns:
        str | None: the value MKL will see, or ``None`` when it is left to pick by itself.
    """
    if MKL_CPU_TYPE_VARIABLE in environ:
        return environ[MKL_CPU_TYPE_VARIABLE]
    vendor = cpu_vendor() if vendor is None else vendor
    if vendor != "AuthenticAMD":
        return None
    cpu_type = mkl_cpu_type_for(vendor, cpu_flags() if flags is None else flags)
    if cpu_type is not None:
        environ[MKL_CPU_TYPE_VARIABLE] = cpu_type
    return cpu_type


def configure_cpu(threads: int | None = None) -> CpuSettings:
    """Set Paddle's CPU math threads, MKL's code path and the heap's reuse; call before the first computation.

    Args:
        threads (int, optional): math threads for this process; ``None`` uses
            :func:`default_threads`. Default: None.

    Raises:
        ValueError: ``threads`` is smaller than 1.
    """
    if threads is not None and threads < 1:
        raise ValueError(f"the number of CPU threads must be at least 1, got {threads}")
    mkl_cpu_type = use_fast_mkl_on_amd()
    import paddle

    global _configured_threads
    threads = threads or default_threads()
    paddle.base.core.set_num_threads(threads)  # MKL's threads (tests/test_cpu_runtime.py checks them)
    _configured_threads = threads
    heap = keep_freed_memory()
    logger.debug("CPU math: %d thread(s), %s=%s, freed memory kept: %s", threads, MKL_CPU_TYPE_VARIABLE,
                 mkl_cpu_type, heap)
    return CpuSettings(threads=threads, mkl_cpu_type=mkl_cpu_type, heap_keeps_freed_memory=heap)


def math_threads() -> int:
    """The threads :func:`configure_cpu` gave this process, which the package's own CPU kernels use too (1 before)."""
    return _configured_threads
