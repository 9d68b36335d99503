"""The web app (Gradio): :func:`build_app` and :func:`launch` (``ui``); the model's work without the web,
:class:`XrayService` (``service``). Gradio is imported only by ``ui`` (``pip install -r requirements-app.txt``)."""
from __future__ import annotations

import importlib

_EXPORTS = {"build_app": "ui", "launch": "ui", "XrayService": "service", "UploadError": "service",
            "DISCLAIMER": "service", "write_examples": "service"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
