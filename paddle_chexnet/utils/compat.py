"""The PaddlePaddle releases this package supports, and the few differences between them it bridges.

Supported (and tested by CI): PaddlePaddle 2.6.2 and 3.0.0 to 3.3.1, the CPU build
(``paddlepaddle``) or a GPU one (``paddlepaddle-gpu``). Paddle is not a dependency of
the package, so that installing it never replaces the build a machine already has;
:func:`check_paddle_installed` (run by ``import paddle_chexnet``) says in one line how
to install it when it is missing, or that it is older than 2.6.2. Releases after
3.3.1 are not refused: they are untested.

What differs between the supported releases, and where it is handled:

* Exported programs (``paddle.jit.save``): Paddle 3 writes ``model.json`` (PIR) and
  still loads ``model.pdmodel``; Paddle 2.6 writes and loads ``model.pdmodel`` only,
  and crashes on a ``.json`` file (:func:`program_file`).
* ``Layer.eval()`` returns ``None`` in Paddle 2.6 and 3.0 (the layer in 3.3): callers
  call it, then use the layer.
* The C++ CPU training kernels (``paddle_chexnet/cpu/csrc``) compile against Paddle 3.1
  and later only (2.6 lacks ``Tensor::contiguous``, 3.0 a ``const`` accessor they use):
  :func:`builds_cpu_kernels` keeps older releases from trying, and failing, at every
  training run; they train with Paddle's own operators.

This module imports Paddle only inside the functions that need a loaded Paddle.
"""
from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

#: the oldest supported release; older ones are refused at import
MINIMUM_PADDLE = (2, 6, 2)
#: the newest release tested; newer ones are accepted
NEWEST_TESTED_PADDLE = (3, 3, 1)
#: the supported releases, as docs/install.md and pyproject.toml's [tool.paddle-chexnet] state them
SUPPORTED_PADDLE = "2.6.2 and 3.0.0 to 3.3.1"
#: the CPU wheel the ``cpu`` extra installs (requirements-cpu.txt)
PINNED_CPU_PADDLE = "3.3.1"

PADDLE_INSTALL_GUIDE = "https://www.paddlepaddle.org.cn/en/install/quick"
_DIST_INFO = re.compile(r"^(paddlepaddle(?:[-_][a-z0-9]+)?)-(\d+)\.(\d+)\.(\d+)[^-]*\.(?:dist|egg)-info$",
                        re.IGNORECASE)


def version_tuple(version: str) -> tuple[int, int, int]:
    """``'3.0.0rc1'`` -> ``(3, 0, 0)``: the release numbers of a Paddle version string.

    Raises:
        ValueError: the string does not start with ``X.Y.Z``.
    """
    match = re.match(r"(\d+)\.(\d+)\.(\d+)", version)
    if match is None:
        raise ValueError(f"not a Paddle version: {version!r}")
    return int(match[1]), int(match[2]), int(match[3])


def paddle_distributions(folder: str | Path) -> list[tuple[str, str]]:
    """The Paddle wheels installed in a ``site-packages`` folder, by their metadata folders' names.

    Reads no file: a wheel's ``<name>-<version>.dist-info`` folder names it. Returns
    ``[(name, 'X.Y.Z'), ...]`` (``paddlepaddle``, ``paddlepaddle_gpu``, ...), sorted.
    """
    found = []
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                match = _DIST_INFO.match(entry.name)
                if match and entry.is_dir():
                    found.append((match[1].lower(), ".".join(match.group(2, 3, 4))))
    except OSError:
        return []
    return sorted(found)


def missing_paddle_message() -> str:
    """The one-line error of ``import paddle_chexnet`` when Paddle is not installed."""
    return (
        f"paddle_chexnet needs PaddlePaddle ({SUPPORTED_PADDLE}), which is not installed: on a CPU run "
        f"`pip install -e \".[cpu]\"` in the repository (or `pip install paddlepaddle=={PINNED_CPU_PADDLE}`); "
        f"on an NVIDIA GPU install the paddlepaddle-gpu build for your CUDA from {PADDLE_INSTALL_GUIDE}, "
        "then `pip install -e .` (docs/install.md)"
    )


def too_old_message(name: str, version: str, folder: str | Path) -> str:
    """The one-line error of ``import paddle_chexnet`` when the installed Paddle is older than 2.6.2."""
    build = "paddlepaddle-gpu" if "gpu" in name else "paddlepaddle"
    return (
        f"paddle_chexnet supports PaddlePaddle {SUPPORTED_PADDLE}, but {name.replace('_', '-')} {version} is "
        f"installed (in {folder}): install a supported {build} (e.g. `pip install {build}==2.6.2`, or a 3.x "
        f"for your CUDA from {PADDLE_INSTALL_GUIDE}; docs/install.md)"
    )


def check_paddle_installed() -> None:
    """Refuse, in one line, a missing Paddle or one older than :data:`MINIMUM_PADDLE`; Paddle is not imported.

    The version comes from the name of the wheel's ``.dist-info`` folder beside the ``paddle``
    package, so no file is read. A Paddle built from source (no such folder, or version 0.0.0)
    is accepted as it is.

    Raises:
        ModuleNotFoundError: Paddle is not installed (the message says how to install the CPU or GPU build).
        ImportError: the installed Paddle is older than 2.6.2 (the message names it and the supported range).
    """
    try:
        spec = importlib.util.find_spec("paddle")
    except ImportError:  # e.g. an import hook that refuses paddle
        spec = None
    if spec is None:
        raise ModuleNotFoundError(missing_paddle_message(), name="paddle")
    locations = list(spec.submodule_search_locations or [])
    if not locations:
        return
    folder = Path(locations[0]).parent
    for name, version in paddle_distributions(folder):
        release = version_tuple(version)
        if release != (0, 0, 0) and release < MINIMUM_PADDLE:
            raise ImportError(too_old_message(name, version, folder), name="paddle")


def paddle_version() -> tuple[int, int, int]:
    """The loaded Paddle's release numbers, ``(3, 3, 1)``; a build from source (``0.0.0``) counts as the newest."""
    import paddle

    release = version_tuple(paddle.__version__)
    return (99, 0, 0) if release == (0, 0, 0) else release


def builds_cpu_kernels() -> bool:
    """True when the package's C++ CPU kernels compile against the loaded Paddle (3.1 and later)."""
    return paddle_version() >= (3, 1, 0)


def program_suffixes() -> tuple[str, ...]:
    """The exported-program files this Paddle loads, preferred first: ``.json`` (PIR) only from Paddle 3 on."""
    return (".json", ".pdmodel") if paddle_version() >= (3, 0, 0) else (".pdmodel",)


def program_file(prefix: str | Path) -> Path:
    """The program file of the export at ``prefix`` that this Paddle can load (``prefix.json`` or ``.pdmodel``).

    Raises:
        FileNotFoundError: neither exists, or only ``prefix.json`` under Paddle 2.6 (which cannot read
            Paddle 3's format and would crash on it); the message says what to do.
    """
    for suffix in program_suffixes():
        candidate = Path(f"{prefix}{suffix}")
        if candidate.is_file():
            return candidate
    if Path(f"{prefix}.json").is_file():
        import paddle

        raise FileNotFoundError(
            f"{prefix}.json was exported by Paddle 3 (its PIR format), which Paddle {paddle.__version__} cannot "
            f"load: export the model again with this Paddle, or use Paddle 3"
        )
    raise FileNotFoundError(f"no exported model at {prefix}.json or {prefix}.pdmodel")
