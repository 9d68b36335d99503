"""Where the package keeps what it can rebuild: one cache folder."""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

CACHE_VARIABLE = "PADDLE_CHEXNET_CACHE"


def cache_root(environ: Mapping[str, str] = os.environ) -> Path:
    """``$PADDLE_CHEXNET_CACHE``, else ``$XDG_CACHE_HOME/paddle_chexnet``, else ``~/.cache/paddle_chexnet``.

    Holds the exports for Paddle Inference (``exports/``) and the compiled CPU kernels
    (``kernels/``); everything in it is rebuilt when deleted.
    """
    if environ.get(CACHE_VARIABLE):
        return Path(environ[CACHE_VARIABLE]).expanduser()
    base = environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "paddle_chexnet"
