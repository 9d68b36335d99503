"""Training checkpoints: ``NAME.pdparams`` + ``NAME.pdopt`` + ``NAME.json``, written atomically.

* ``NAME.pdparams`` is the network's ``state_dict`` and nothing else, so it
  loads with ``chexnet(weights=...)`` and :func:`~paddle_chexnet.models.state_dict.load_weights`.
* ``NAME.pdopt`` is the optimizer's ``state_dict`` (moments, step counters and
  the learning-rate schedule) with each entry keyed by the parameter's
  *structured* name (``features.conv0.weight_moment1_0``) instead of Paddle's
  generated one (``conv2d_0.w_0_moment1_0``). Generated names depend on how many
  layers a process created before, so they differ between a run and its resume
  in the same Python session; structured names do not.
* ``NAME.json`` is small and readable: epoch, metric, config, the state of the
  callbacks, the history, and the SHA-256 of the two binary files.

Each file is written to a temporary file and renamed over the old one
(:func:`~paddle_chexnet.utils.io.atomic_path`), so killing the process at any
moment leaves every file whole. The JSON is written last and names the digests
of the files it belongs with: a kill between two renames (a window of
microseconds) leaves files from two different epochs, which
:func:`load_checkpoint` detects instead of resuming from a mixture. Training
saves ``last`` before ``best``, so at most one of the two can be caught that way
and resuming falls back to the other (see :func:`find_resumable`).
"""
from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import paddle

from paddle_chexnet.models.state_dict import check_state_dict
from paddle_chexnet.utils.hashing import file_sha256
from paddle_chexnet.utils.io import atomic_paddle_save, atomic_write_text

logger = logging.getLogger(__name__)


PARAMS_SUFFIX, OPT_SUFFIX, META_SUFFIX = ".pdparams", ".pdopt", ".json"


FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable or whose files do not belong together."""


def checkpoint_paths(directory: str | Path, name: str) -> dict[str, Path]:
    """``{'params': DIR/NAME.pdparams, 'opt': DIR/NAME.pdopt, 'meta': DIR/NAME.json}``."""
    directory = Path(directory)
    return {
        "params": directory / f"{name}{PARAMS_SUFFIX}",
        "opt": directory / f"{name}{OPT_SUFFIX}",
        "meta": directory / f"{name}{META_SUFFIX}",
    }


def _param_name_map(network: paddle.nn.Layer) -> dict[str, str]:
    """Paddle's generated parameter name -> structured name (``features.conv0.weight``)."""
    return {param.name: name for name, param in network.named_parameters()}


def _rename_prefixed(state: Mapping[str, Any], mapping: Mapping[str, str]) -> dict[str, Any]:
    """Rename keys ``OLD_suffix`` to ``NEW_suffix`` for each ``OLD -> NEW`` in ``mapping``.

    Longest names are tried first so that a name that is a prefix of another
    (``linear_1.w_0`` and ``linear_1.w_0_x``) can never capture the wrong key.
    """
    olds = sorted(mapping, key=len, reverse=True)
    renamed: dict[str, Any] = {}
    for key, value in state.items():
        for old in olds:
            if key.startswith(old + "_"):
                renamed[mapping[old] + key[len(old):]] = value
                break
        else:
            renamed[key] = value
    return renamed


def optimizer_state(network: paddle.nn.Layer, optimizer: paddle.optimizer.Optimizer) -> dict[str, Any]:
    """The optimizer's ``state_dict`` keyed by structured parameter names."""
    return _rename_prefixed(optimizer.state_dict(), _param_name_map(network))


def load_optimizer_state(
    network: paddle.nn.Layer, optimizer: paddle.optimizer.Optimizer, state: Mapping[str, Any]
) -> None:
    """Inverse of :func:`optimizer_state`: map structured names back to this process's names and load."""
    structured_to_generated = {structured: generated for generated, structured in _param_name_map(network).items()}
    optimizer.set_state_dict(_rename_prefixed(state, structured_to_generated))


def _to_jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_jsonable(v) for v in value]
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return value


def save_checkpoint(
    directory: str | Path,
    name: str,
    network: paddle.nn.Layer,
    optimizer: paddle.optimizer.Optimizer,
    meta: Mapping[str, Any],
) -> dict[str, Path]:
    """Write ``NAME.pdparams``, ``NAME.pdopt`` and then ``NAME.json`` atomically.

    Args:
        directory (str | Path): the checkpoint folder (created if needed).
        name (str): ``'last'``, ``'best'`` ...
        network (paddle.nn.Layer): the network whose ``state_dict`` is saved.
        optimizer (paddle.optimizer.Optimizer): its optimizer.
        meta (Mapping): JSON-serialisable facts (epoch, metric, config, callback states).

    Returns:
        dict[str, Path]: the three paths, as :func:`checkpoint_paths`.
    """
    paths = checkpoint_paths(directory, name)
    atomic_paddle_save(network.state_dict(), paths["params"])
    atomic_paddle_save(optimizer_state(network, optimizer), paths["opt"])
    record = dict(_to_jsonable(dict(meta)))
    record["format_version"] = FORMAT_VERSION
    record["files"] = {
        paths["params"].name: file_sha256(paths["params"]),
        paths["opt"].name: file_sha256(paths["opt"]),
    }
    atomic_write_text(paths["meta"], json.dumps(record, indent=2, sort_keys=True) + "\n")
    return paths


def read_checkpoint_meta(directory: str | Path, name: str, verify: bool = True) -> dict[str, Any]:
    """Read ``NAME.json`` and (``verify=True``) check that both binary files match its digests.

    Raises:
        CheckpointError: a file is missing or the files come from different saves.
    """
    paths = checkpoint_paths(directory, name)
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise CheckpointError(f"checkpoint {name!r} in {directory} is incomplete; missing: {', '.join(missing)}")
    try:
        meta = json.loads(paths["meta"].read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{paths['meta']} is not valid JSON ({exc}); the checkpoint cannot be resumed") from exc
    if verify:
        for key in ("params", "opt"):
            expected = meta.get("files", {}).get(paths[key].name)
            if expected != file_sha256(paths[key]):
                raise CheckpointError(
                    f"{paths[key]} does not match {paths['meta'].name} (SHA-256 differs): the process was "
                    "stopped while saving, so these files come from two different epochs"
                )
    return meta


def load_checkpoint(
    directory: str | Path,
    name: str,
    network: paddle.nn.Layer,
    optimizer: paddle.optimizer.Optimizer | None = None,
) -> dict[str, Any]:
    """Load a checkpoint into ``network`` (and ``optimizer``) after verifying it; return its JSON.

    Raises:
        CheckpointError: missing or mismatched files.
        StateDictMismatchError: the weights do not fit ``network`` (other architecture or classes).
    """
    meta = read_checkpoint_meta(directory, name, verify=True)
    paths = checkpoint_paths(directory, name)
    params = paddle.load(str(paths["params"]))
    check_state_dict(network, params, source=str(paths["params"]))
    network.set_state_dict(params)
    if optimizer is not None:
        load_optimizer_state(network, optimizer, paddle.load(str(paths["opt"])))
    return meta


def find_resumable(directory: str | Path, names: tuple[str, ...] = ("last", "best")) -> str | None:
    """The first of ``names`` whose checkpoint is complete and consistent, or ``None`` if none exists.

    A candidate that exists but is inconsistent is skipped with a warning that
    says which one is used instead.
    """
    problems = []
    for name in names:
        if not checkpoint_paths(directory, name)["meta"].is_file():
            continue
        try:
            read_checkpoint_meta(directory, name, verify=True)
        except CheckpointError as exc:
            problems.append(str(exc))
            continue
        for problem in problems:
            logger.warning("%s; resuming from %r instead", problem, name)
        return name
    if problems:
        raise CheckpointError("no consistent checkpoint to resume from:\n  " + "\n  ".join(problems))
    return None
