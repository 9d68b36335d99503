"""Multi-threaded CPU kernels for training (``csrc/cpu_kernels.cc``), compiled once per machine.

Paddle's CPU kernels for BatchNorm, ReLU, concat and pooling run on one
thread, and its convolution copies the wide side of DenseNet's 3x3
convolutions nine times over. This module builds Paddle custom operators
(OpenMP over channels or images, MKL's CBLAS for the products); the Paddle
functions around them are in :mod:`paddle_chexnet.cpu.ops` and the layers
that use them in :mod:`paddle_chexnet.cpu.layers`.

:func:`prepare_kernels` compiles the source with the C++ compiler Paddle's
``cpp_extension`` finds (``g++``), with ``-march=native``, or loads a cached
build, from ``kernels/<hash>`` in the package's cache root
(``PADDLE_CHEXNET_KERNEL_DIR`` moves it). The hash covers the source, the
flags, Paddle's version and folder, and the processor's instruction sets, so a
changed source, another Paddle installation or another processor builds anew
and a cached build never runs where it does not fit. Processes started
together (``paddle.distributed.launch``) build it once, under a file lock. The
trainer calls it before training starts; nothing ever builds inside a forward
pass (:func:`cpu_kernels` only returns what was prepared). The kernels:
BatchNorm+ReLU fused (and with a transition's pooling), the 3x3 and im2col
convolutions, max pooling, channel concatenation, and EfficientNet's depthwise
convolution.

``PADDLE_CHEXNET_CPU_KERNELS=0`` turns the kernels off. Where the build fails
(no compiler) or off Linux (the build uses GNU ld and OpenMP), a warning says
so once and training goes on with Paddle's kernels, slower; the results are the
same to float rounding either way (``tests/test_cpu_kernels.py``).
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sys
import time
import warnings
from pathlib import Path
from types import ModuleType

import paddle

from paddle_chexnet.cpu.runtime import cpu_flags
from paddle_chexnet.utils.compat import builds_cpu_kernels
from paddle_chexnet.utils.paths import cache_root

logger = logging.getLogger(__name__)


SOURCE = Path(__file__).resolve().parent / "csrc" / "cpu_kernels.cc"


COMPILE_FLAGS = ("-O3", "-march=native", "-fopenmp", "-fno-math-errno")


LINK_FLAGS = ("-Wl,--no-as-needed", "-l:libiomp5.so", "-l:libmklml_intel.so")


SWITCH_VARIABLE = "PADDLE_CHEXNET_CPU_KERNELS"


OPERATORS = ("chexnet_bn_relu", "chexnet_bn_relu_pool", "chexnet_concat", "chexnet_conv3x3", "chexnet_conv_im2col",
             "chexnet_max_pool", "chexnet_depthwise_conv")


DIRECTORY_VARIABLE = "PADDLE_CHEXNET_KERNEL_DIR"


class KernelBuildError(RuntimeError):
    """The CPU kernels could not be compiled or loaded."""


def kernels_enabled(environ=os.environ) -> bool:
    """False where the user turned the kernels off (``PADDLE_CHEXNET_CPU_KERNELS=0``)."""
    return environ.get(SWITCH_VARIABLE, "1").strip().lower() not in ("0", "false", "no", "off")


def build_key() -> str:
    """What a cached build depends on: source, flags, the Paddle installation and the processor's instruction sets.

    The installation's folder counts, not only its version: the library is
    linked against that installation's ``libpaddle.so`` and MKL (by path), so
    another virtual environment gets a build of its own.
    """
    digest = hashlib.sha256()
    digest.update(SOURCE.read_bytes())
    installation = str(Path(paddle.__file__).resolve().parent)
    digest.update(repr((COMPILE_FLAGS, LINK_FLAGS, paddle.__version__, installation, sorted(cpu_flags()))).encode())
    return digest.hexdigest()[:16]


def build_directory(environ=os.environ) -> Path:
    """Where builds are kept: ``$PADDLE_CHEXNET_KERNEL_DIR``, else ``kernels/`` in the package's cache root."""
    if environ.get(DIRECTORY_VARIABLE):
        return Path(environ[DIRECTORY_VARIABLE]).expanduser()
    return cache_root(environ) / "kernels"


@contextlib.contextmanager
def _output_to(log_path: Path):
    """Send this process's stdout and stderr (and its children's: the compiler's) to ``log_path``.

    Paddle's extension builder runs setup.py in a subprocess that prints every
    compiler command and a ccache notice; that belongs in a build log, not in
    a training log.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(log_path, "w") as log:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)


def _log_tail(log_path: Path, lines: int = 15) -> str:
    try:
        text = log_path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


# builds loaded in this process, by key: Paddle registers a custom operator once per process, and a
# second load of the same library would give a module without the operators
_loaded: dict[str, ModuleType] = {}


def build(directory: Path | None = None) -> ModuleType:
    """Compile (or reuse a cached build of) the kernels and load them.

    Raises:
        KernelBuildError: the compiler or the loader failed; the message says why and how to go without.
    """
    key = build_key()
    if key in _loaded:
        return _loaded[key]
    root = (directory or build_directory()) / key
    log_path = root / "build.log"
    try:
        import fcntl  # Linux only, as the kernels (cpu_kernels() asks for them nowhere else)

        root.mkdir(parents=True, exist_ok=True)
        with open(root / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one build for all processes of a launch
            with _output_to(log_path):
                from paddle.utils.cpp_extension import load

                module = load(
                    name=f"paddle_chexnet_cpu_{key}",
                    sources=[str(SOURCE)],
                    extra_cxx_cflags=list(COMPILE_FLAGS),
                    extra_ldflags=list(LINK_FLAGS),
                    build_directory=str(root),
                    verbose=False,
                )
    except Exception as exc:  # the compiler's, setuptools' and the loader's errors all end here
        tail = _log_tail(log_path)
        raise KernelBuildError(
            f"could not build the CPU training kernels from {SOURCE} in {root}: {type(exc).__name__}: {exc}"
            + (f"\nlast lines of {log_path}:\n{tail}" if tail else "")
            + f"\nTraining still works with Paddle's own kernels (slower on the CPU); install a C++ compiler "
            f"(g++) to get them, or set {SWITCH_VARIABLE}=0 to stop trying."
        ) from exc
    missing = [op for op in OPERATORS if not hasattr(module, op)]
    if missing:
        raise KernelBuildError(f"the build in {root} loaded without the operators {', '.join(missing)}")
    _loaded[key] = module
    return module


def build_or_warn(directory: Path | None = None) -> ModuleType | None:
    """:func:`build`, or ``None`` with a warning that says why and that Paddle's kernels are used instead."""
    try:
        return build(directory)
    except KernelBuildError as exc:
        logger.warning("%s", exc)
        return None


# the build prepare_kernels loaded in this process (None before it ran, or where it failed)
_prepared: ModuleType | None = None
_prepare_attempted = False


def kernels_available_here() -> bool:
    """True where the kernels may run: Linux, Paddle 3.1+, and not turned off (``PADDLE_CHEXNET_CPU_KERNELS=0``)."""
    return kernels_enabled() and sys.platform.startswith("linux") and builds_cpu_kernels()


def prepare_kernels(directory: Path | None = None) -> ModuleType | None:
    """Build (or load the cached build of) the kernels once per process, before training; log one line.

    Returns:
        ModuleType | None: the operators, or ``None`` where they are turned off, off Linux, or the build
        failed (a warning then says why and that Paddle's own kernels are used).
    """
    global _prepared, _prepare_attempted
    if not kernels_available_here():
        return None
    if not _prepare_attempted:
        _prepare_attempted = True
        started = time.perf_counter()
        cached = build_key() in _loaded
        _prepared = build_or_warn(directory)
        if _prepared is not None:
            logger.info("CPU training kernels ready in %.1f s (%s in %s)", time.perf_counter() - started,
                        "loaded" if cached else "built or loaded from the build cache", build_directory())
    return _prepared


def cpu_kernels() -> ModuleType | None:
    """The kernels :func:`prepare_kernels` loaded, or ``None``; never builds (so never inside a forward pass).

    ``PADDLE_CHEXNET_CPU_KERNELS`` is read at every call, so it can be changed
    while a program runs (the tests compare both paths that way).
    """
    return _prepared if kernels_available_here() else None
