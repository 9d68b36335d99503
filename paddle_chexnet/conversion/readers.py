"""Reading checkpoint files (PyTorch and Paddle) into a plain name -> NumPy array mapping.

The kind of file is told by its first bytes, not its name: a PyTorch file is a
zip archive (torch >= 1.6) or a pickle that starts with torch's legacy magic
number (older torch, e.g. arnoweng/CheXNet's ``model.pth.tar``); everything
else named ``.pdparams`` goes to ``paddle.load``. (``paddle.load`` happily
"reads" a legacy torch file into garbage, so the order matters.)

PyTorch files are read with ``weights_only=True``: only tensors and plain
containers are unpickled. A file that pickles a whole ``nn.Module``
(jrzech/reproduce-chexnet's ``checkpoint``) names Python classes to import and
call while loading, which is arbitrary code execution; such files are read only
with ``trust_pickle=True`` (``--trust-pickle``).

torch is optional for the package: it is imported only here, when a PyTorch
file is read.
"""
from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from paddle_chexnet.conversion.layouts import to_numpy

TORCH_INSTALL_HINT = "pip install torch==2.14.1 torchvision==0.29.1"


ZIP_MAGIC = b"PK\x03\x04"


# torch's legacy format pickles this number first (protocol 2: \x80\x02, LONG1 of 10 bytes: \x8a\n).
LEGACY_MAGIC = b"\x80\x02\x8a\n" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")


# Entries under which training scripts store the weights in a checkpoint dict.
STATE_ENTRIES: tuple[str, ...] = ("state_dict", "model", "model_state", "model_state_dict")


class CheckpointReadError(ValueError):
    """A checkpoint file that is missing, truncated, refused or not a checkpoint."""


@dataclass
class Checkpoint:
    """A checkpoint read from disk.

    Attributes:
        state (dict[str, numpy.ndarray]): the weights by their names in the file.
        framework (str): ``'torch'`` or ``'paddle'``.
        entry (str): where the weights were in the file: ``'top level'``, ``"['state_dict']"``,
            or ``"['model'] (pickled module)"``.
        path (Path): the file.
    """

    state: dict[str, np.ndarray]
    framework: str
    entry: str
    path: Path


def sniff_framework(path: str | Path) -> str:
    """``'torch'``, ``'paddle'`` or ``'unknown'`` from the first bytes (and, for Paddle, the suffix)."""
    with open(path, "rb") as handle:
        head = handle.read(len(LEGACY_MAGIC))
    if head.startswith(ZIP_MAGIC) or head == LEGACY_MAGIC:
        return "torch"
    if Path(path).suffix == ".pdparams":
        return "paddle"
    return "unknown"


def _import_torch():
    try:
        import torch
    except ImportError as exc:
        raise ImportError(f"reading PyTorch checkpoints needs PyTorch: {TORCH_INSTALL_HINT}") from exc
    return torch


def _unwrap(obj: object, path: Path) -> tuple[Mapping[str, object], str]:
    """Find the state dict inside what ``torch.load`` returned."""
    if hasattr(obj, "state_dict") and callable(obj.state_dict):
        return obj.state_dict(), "top level (pickled module)"
    if not isinstance(obj, Mapping):
        raise CheckpointReadError(f"{path} holds a {type(obj).__name__}, not a state dict or checkpoint dict")
    for entry in STATE_ENTRIES:
        if entry in obj:
            inner = obj[entry]
            if hasattr(inner, "state_dict") and callable(inner.state_dict):
                return inner.state_dict(), f"[{entry!r}] (pickled module)"
            if isinstance(inner, Mapping):
                return inner, f"[{entry!r}]"
    return obj, "top level"


def _arrays(state: Mapping[str, object], path: Path, entry: str) -> dict[str, np.ndarray]:
    out = {}
    for key, value in state.items():
        if not hasattr(value, "shape"):
            present = ", ".join(repr(k) for k in list(state)[:8])
            raise CheckpointReadError(
                f"{path}: entry {entry} is not a state dict: {key!r} holds a {type(value).__name__}, "
                f"not a tensor (keys: {present}). Expected the weights at the top level or under one of "
                f"{', '.join(STATE_ENTRIES)}."
            )
        out[str(key)] = to_numpy(str(key), value)
    return out


def read_torch_checkpoint(path: str | Path, trust_pickle: bool = False) -> Checkpoint:
    """Read a PyTorch checkpoint's weights as NumPy arrays.

    Args:
        path (str | Path): a ``.pth``/``.pth.tar``/``.pt``/extension-less torch file.
        trust_pickle (bool, optional): unpickle arbitrary Python objects (needed for files that
            store a whole model, like jrzech/reproduce-chexnet's). Only for files you trust:
            unpickling runs code the file names. Default: False.

    Returns:
        Checkpoint: the state dict under ``state_dict``/``model``/``model_state``/``model_state_dict``
        (a pickled module's ``state_dict()``), or the top-level dict.

    Raises:
        FileNotFoundError: no such file.
        CheckpointReadError: truncated, corrupt, not a checkpoint, or a pickled module without
            ``trust_pickle``; the message names the file and what to do.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    torch = _import_torch()
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if found and not trust_pickle:
            raise CheckpointReadError(
                f"{path} pickles Python objects ({found.group(1)}), not only tensors: it stores a whole "
                "model, as jrzech/reproduce-chexnet's `checkpoint` does. Unpickling it imports and runs "
                "code named in the file, which can do anything, so it is refused by default. If you trust "
                "where the file comes from, pass --trust-pickle (trust_pickle=True)."
            ) from exc
        raise CheckpointReadError(f"{path} is not a readable PyTorch checkpoint (corrupt pickle: {exc})") from exc
    except (RuntimeError, EOFError, KeyError, ValueError, OSError) as exc:
        # torch reports truncation as RuntimeError ("unexpected EOF", "failed finding central
        # directory") or EOFError; garbage inside a valid header as KeyError/UnpicklingError.
        detail = str(exc).split("\n")[0].split(". ")[0][:200].rstrip(".") or "no detail"
        raise CheckpointReadError(
            f"cannot read {path}: the file is truncated or corrupt ({type(exc).__name__}: {detail}). "
            "Download or copy it again and compare its size/checksum with the original."
        ) from exc
    except (AttributeError, ModuleNotFoundError, ImportError) as exc:
        raise CheckpointReadError(
            f"{path} pickles a Python class that cannot be imported here ({exc}); install the code that "
            "saved it or re-save only its state_dict()"
        ) from exc
    state, entry = _unwrap(obj, path)
    return Checkpoint(_arrays(state, path, entry), "torch", entry, path)


def read_paddle_checkpoint(path: str | Path) -> Checkpoint:
    """Read a ``.pdparams`` file (this package's or paddle.vision's names) as NumPy arrays."""
    import paddle

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        obj = paddle.load(str(path))
    except (ValueError, EOFError, pickle.UnpicklingError, OSError, RuntimeError) as exc:
        raise CheckpointReadError(
            f"cannot read {path}: not a complete .pdparams file ({type(exc).__name__}: {exc}). "
            "Copy it again or re-create it."
        ) from exc
    state, entry = _unwrap(obj, path)
    return Checkpoint(_arrays(state, path, entry), "paddle", entry, path)


def read_checkpoint(path: str | Path, trust_pickle: bool = False) -> Checkpoint:
    """Read a PyTorch or Paddle checkpoint, telling which from the file's first bytes.

    Examples:
        >>> checkpoint = read_checkpoint("model.pth.tar")  # doctest: +SKIP
        >>> checkpoint.framework, checkpoint.entry  # doctest: +SKIP
        ('torch', "['state_dict']")
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    framework = sniff_framework(path)
    if framework == "torch":
        return read_torch_checkpoint(path, trust_pickle=trust_pickle)
    if framework == "paddle":
        return read_paddle_checkpoint(path)
    size = path.stat().st_size
    raise CheckpointReadError(
        f"{path} ({size} bytes) is not a checkpoint: a PyTorch file starts as a zip archive or with torch's "
        "legacy magic number, and Paddle weights end in .pdparams. "
        + ("The file is empty." if size == 0 else "Check that you passed the weights file, not a list or an image.")
    )
