"""paddle-chexnet: CheXNet (Rajpurkar et al. 2017) in PaddlePaddle.

Importing the package does nothing else: it checks that PaddlePaddle is
installed and not older than the oldest supported release (without importing
it or reading a file: :func:`paddle_chexnet.utils.compat.check_paddle_installed`
raises a one-line ``ImportError`` saying what to install), sets no environment
variable, reads no file, imports Paddle only when a name that needs it is used,
and prints nothing. The CPU settings that make training fast (math threads, MKL's
code path, the heap) are applied by the commands, for CPU work only
(:mod:`paddle_chexnet.cpu.runtime`).

Subpackages: ``data`` (labels, label lists, images, datasets, transforms),
``models`` (networks, registry, loader), ``engine`` (training), ``evaluation``,
``inference``, ``localization`` (heatmaps and boxes), ``conversion`` (PyTorch
checkpoints), ``cpu`` (CPU runtime and kernels), ``cli`` (the commands).
"""
from __future__ import annotations

import importlib
import warnings

from paddle_chexnet.utils.compat import check_paddle_installed

__version__ = "0.2.0"

check_paddle_installed()

# Paddle warns at its own import that ccache is missing, which only matters to people compiling
# Paddle extensions: the package's own kernel build says what it needs when it needs it.
warnings.filterwarnings("ignore", message="No ccache found", category=UserWarning)

_EXPORTS = {
    "CLASS_NAMES": "paddle_chexnet.data.labels",
    "NUM_CLASSES": "paddle_chexnet.data.labels",
    "DenseNet": "paddle_chexnet.models.densenet",
    "chexnet": "paddle_chexnet.models.densenet",
    "densenet121": "paddle_chexnet.models.densenet",
    "WithSigmoid": "paddle_chexnet.models.base",
    "build_network": "paddle_chexnet.models.registry",
    "load_network": "paddle_chexnet.models.loading",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'paddle_chexnet' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_EXPORTS))
