"""Strict state-dict checking and loading: never a silent partial load.

The PyTorch reference loaded checkpoints with ``strict=False`` after a rename
that silently missed keys, and users lost accuracy without knowing. Here every
load compares the complete key set and every shape, and refuses with a list of
what differs.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import paddle

from paddle_chexnet.errors import UnusableFileError


class StateDictMismatchError(UnusableFileError):
    """A state dict does not fit a model: missing or unexpected keys, or shapes."""


def _shape(value) -> tuple[int, ...]:
    return tuple(int(d) for d in (value.shape if hasattr(value, "shape") else np.shape(value)))


def mismatch_report(
    expected: Mapping[str, tuple[int, ...]], actual: Mapping[str, object], limit: int = 20
) -> str:
    """Describe how ``actual`` differs from the ``expected`` key -> shape map ('' when it fits)."""
    missing = sorted(set(expected) - set(actual))
    unexpected = sorted(set(actual) - set(expected))
    wrong_shape = [
        f"{key}: expected {list(expected[key])}, got {list(_shape(actual[key]))}"
        for key in expected
        if key in actual and tuple(expected[key]) != _shape(actual[key])
    ]
    parts = []
    for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", wrong_shape)):
        if items:
            shown = "\n    ".join(items[:limit])
            more = f"\n    ... and {len(items) - limit} more" if len(items) > limit else ""
            parts.append(f"  {len(items)} {title}:\n    {shown}{more}")
    return "\n".join(parts)


def expected_shapes(model: paddle.nn.Layer) -> dict[str, tuple[int, ...]]:
    """The model's own ``state_dict`` as a key -> shape map."""
    return {key: tuple(int(d) for d in value.shape) for key, value in model.state_dict().items()}


def check_state_dict(model: paddle.nn.Layer, state: Mapping[str, object], source: str = "state dict") -> None:
    """Raise :class:`StateDictMismatchError` unless ``state`` has exactly the model's keys and shapes.

    Args:
        model (paddle.nn.Layer): the network the weights are for.
        state (Mapping[str, object]): parameter name -> array or tensor.
        source (str, optional): what to call ``state`` in the message (a file name). Default: "state dict".
    """
    report = mismatch_report(expected_shapes(model), state)
    if report:
        raise StateDictMismatchError(
            f"{source} does not fit {type(model).__name__}:\n{report}\n"
            "Convert PyTorch checkpoints with tools/convert_torch.py; weights written by this package carry "
            "their architecture and classes in the JSON beside them."
        )


MISSING_WEIGHTS_HELP = (
    "convert a PyTorch checkpoint with `python tools/convert_torch.py SRC` or train one with `python train.py`, "
    "then pass the .pdparams file with --weights"
)


class NonFiniteWeightsError(UnusableFileError):
    """A weights file holding NaN or infinite values (a diverged training run)."""


def non_finite_tensors(state: Mapping[str, object]) -> list[str]:
    """Names of the floating-point entries of ``state`` that hold a NaN or an infinity."""
    bad = []
    for key, value in state.items():
        array = value.numpy() if hasattr(value, "numpy") else np.asarray(value)
        if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            bad.append(key)
    return bad


def check_finite(state: Mapping[str, object], source: str = "state dict") -> None:
    """Raise :class:`NonFiniteWeightsError` if any tensor of ``state`` holds NaN or infinity."""
    bad = non_finite_tensors(state)
    if bad:
        raise NonFiniteWeightsError(
            f"{source} holds NaN or infinite values in {len(bad)} of {len(state)} tensors (first: "
            f"{', '.join(bad[:3])}): it comes from a training run that diverged. Use an earlier checkpoint, "
            "or train again with a lower learning rate"
        )


def require_weights_file(path: str | Path) -> Path:
    """``path`` as a Path if it is a file, else a ``FileNotFoundError`` that says how to get weights."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist; {MISSING_WEIGHTS_HELP}")
    return path


def read_state_dict(path: str | Path) -> dict[str, object]:
    """Read a ``.pdparams`` file: it must exist, be a readable state dict and hold only finite values.

    Raises:
        FileNotFoundError: no such file (the message says how to get weights).
        UnusableFileError: not a readable state dict, or non-finite values (:class:`NonFiniteWeightsError`).
    """
    path = require_weights_file(path)
    try:
        state = paddle.load(str(path))
    except Exception as exc:  # paddle raises several types for corrupt files
        raise UnusableFileError(f"{path} is not a readable .pdparams file ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, Mapping):
        raise UnusableFileError(f"{path} holds a {type(state).__name__}, not a state dict of parameter arrays")
    check_finite(state, str(path))
    return dict(state)


def load_weights(model: paddle.nn.Layer, path: str | Path) -> None:
    """Load a ``.pdparams`` file into ``model`` after a strict key, shape and finiteness check."""
    state = read_state_dict(path)
    check_state_dict(model, state, source=str(path))
    model.set_state_dict(state)
