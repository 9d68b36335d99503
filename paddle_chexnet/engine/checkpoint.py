"""Training checkpoints: ``NAME.pdparams`` + ``NAME.pdopt`` + ``NAME.json``, where the JSON is the commit.

* ``NAME.pdparams`` is the network's ``state_dict`` and nothing else, so it
  loads with ``load_network`` and :func:`~paddle_chexnet.models.state_dict.load_weights`.
* ``NAME.pdopt`` is the optimizer's ``state_dict`` (moments, step counters and
  the learning-rate schedule) with each entry keyed by the parameter's
  *structured* name (``features.conv0.weight_moment1_0``) instead of Paddle's
  generated one (``conv2d_0.w_0_moment1_0``). Generated names depend on how many
  layers a process created before, so they differ between a run and its resume
  in the same Python session; structured names do not.
* ``NAME.json`` is small and readable: epoch, metric, config, the state of the
  callbacks, the history, and the files it belongs with and their SHA-256.

Two files cannot be replaced in one atomic step, so a save writes both binary
files under new names in the hidden folder ``DIR/.store/`` first
(``last-<token>.pdparams``, ``last-<token>.pdopt``), then the JSON that names
them, atomically: that rename is the moment the new checkpoint exists. Only
then are ``NAME.pdparams`` and ``NAME.pdopt`` pointed at the new files (hard
links, atomically; a copy where the file system has no links) and the previous
stored files removed. A process killed at any moment therefore leaves the
previous or the new checkpoint whole, never a mixture, and resuming never
falls back to an older ``best`` because ``last`` was caught between two files.
:func:`tidy_checkpoint_dir` (run at the start of training, under the run's lock)
removes temporary files a kill left behind and repairs the ``NAME.*`` links.

Nothing non-finite is ever saved: :func:`save_checkpoint` refuses a network or
optimizer state holding NaN or infinity (:class:`NonFiniteCheckpointError`).
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import paddle

from paddle_chexnet.models.state_dict import check_state_dict, non_finite_tensors
from paddle_chexnet.utils import io as io_utils
from paddle_chexnet.utils.hashing import file_sha256
from paddle_chexnet.utils.io import atomic_paddle_save, atomic_write_text

logger = logging.getLogger(__name__)


PARAMS_SUFFIX, OPT_SUFFIX, META_SUFFIX = ".pdparams", ".pdopt", ".json"


#: 1: the JSON names ``NAME.pdparams`` / ``NAME.pdopt``; 2: it names the files in ``.store/``
FORMAT_VERSION = 2


STORE = ".store"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable or whose files do not belong together."""


class NonFiniteCheckpointError(RuntimeError):
    """A save was asked for a network or optimizer state that holds NaN or infinity (a diverged run)."""


def checkpoint_paths(directory: str | Path, name: str) -> dict[str, Path]:
    """``{'params': DIR/NAME.pdparams, 'opt': DIR/NAME.pdopt, 'meta': DIR/NAME.json}`` (the names users see)."""
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


def _publish(stored: Path, visible: Path) -> None:
    """Point ``visible`` at ``stored`` atomically: a hard link, or a copy where links are not possible."""
    with io_utils.atomic_path(visible) as tmp:
        tmp.unlink()
        try:
            os.link(stored, tmp)
        except OSError:
            shutil.copyfile(stored, tmp)


def save_checkpoint(
    directory: str | Path,
    name: str,
    network: paddle.nn.Layer,
    optimizer: paddle.optimizer.Optimizer,
    meta: Mapping[str, Any],
) -> dict[str, Path]:
    """Write a checkpoint: both binary files under new names, then ``NAME.json`` naming them (the commit).

    Args:
        directory (str | Path): the checkpoint folder (created if needed).
        name (str): ``'last'``, ``'best'`` ...
        network (paddle.nn.Layer): the network whose ``state_dict`` is saved.
        optimizer (paddle.optimizer.Optimizer): its optimizer.
        meta (Mapping): JSON-serialisable facts (epoch, metric, config, callback states).

    Returns:
        dict[str, Path]: the three paths users see, as :func:`checkpoint_paths`.

    Raises:
        NonFiniteCheckpointError: a weight or optimizer value is NaN or infinite; nothing is written.
    """
    directory = Path(directory)
    params, opt_state = network.state_dict(), optimizer_state(network, optimizer)
    for what, state in (("weights", params), ("optimizer state", opt_state)):
        bad = non_finite_tensors({k: v for k, v in state.items() if not isinstance(v, Mapping)})
        if bad:
            raise NonFiniteCheckpointError(
                f"not saving checkpoint {name!r} in {directory}: its {what} hold NaN or infinity in {len(bad)} "
                f"tensor(s) (first: {', '.join(bad[:3])}); the training run diverged"
            )
    paths = checkpoint_paths(directory, name)
    token = secrets.token_hex(6)
    stored = {
        "params": directory / STORE / f"{name}-{token}{PARAMS_SUFFIX}",
        "opt": directory / STORE / f"{name}-{token}{OPT_SUFFIX}",
    }
    atomic_paddle_save(params, stored["params"])
    atomic_paddle_save(opt_state, stored["opt"])
    record = dict(_to_jsonable(dict(meta)))
    record["format_version"] = FORMAT_VERSION
    record["files"] = {path.relative_to(directory).as_posix(): file_sha256(path) for path in stored.values()}
    atomic_write_text(paths["meta"], json.dumps(record, indent=2, sort_keys=True) + "\n")  # the commit
    for key in ("params", "opt"):
        _publish(stored[key], paths[key])
    _remove_unreferenced(directory)
    return paths


def _named_files(directory: Path, name: str, meta: Mapping[str, Any]) -> dict[str, Path]:
    """``{'params': ..., 'opt': ...}``: the files ``NAME.json`` names (format 1: ``NAME.pdparams`` ...)."""
    files: dict[str, Path] = {}
    for relative in meta.get("files", {}):
        path = directory / relative
        role = {PARAMS_SUFFIX: "params", OPT_SUFFIX: "opt"}.get(path.suffix)
        if role is not None:
            files[role] = path
    defaults = checkpoint_paths(directory, name)
    return {role: files.get(role, defaults[role]) for role in ("params", "opt")}


def read_checkpoint_meta(directory: str | Path, name: str, verify: bool = True) -> dict[str, Any]:
    """Read ``NAME.json`` and (``verify=True``) check that the files it names exist and match its digests.

    Raises:
        CheckpointError: a file is missing or does not match its digest.
    """
    directory = Path(directory)
    meta_path = checkpoint_paths(directory, name)["meta"]
    if not meta_path.is_file():
        raise CheckpointError(f"checkpoint {name!r} in {directory} is incomplete; missing: {meta_path}")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{meta_path} is not valid JSON ({exc}); the checkpoint cannot be resumed") from exc
    files = _named_files(directory, name, meta)
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise CheckpointError(f"checkpoint {name!r} in {directory} is incomplete; missing: {', '.join(missing)}")
    if verify:
        digests = meta.get("files", {})
        for path in files.values():
            if digests.get(path.relative_to(directory).as_posix()) != file_sha256(path):
                raise CheckpointError(
                    f"{path} does not match {meta_path.name} (SHA-256 differs): the file was changed or the "
                    "process was stopped while saving, so these files come from two different epochs"
                )
    return meta


def checkpoint_files(directory: str | Path, name: str) -> dict[str, Path]:
    """The weights and optimizer files ``NAME.json`` names (what :func:`load_checkpoint` reads)."""
    meta = read_checkpoint_meta(directory, name, verify=False)
    return _named_files(Path(directory), name, meta)


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
    directory = Path(directory)
    meta = read_checkpoint_meta(directory, name, verify=True)
    files = _named_files(directory, name, meta)
    params = paddle.load(str(files["params"]))
    check_state_dict(network, params, source=str(files["params"]))
    network.set_state_dict(params)
    if optimizer is not None:
        load_optimizer_state(network, optimizer, paddle.load(str(files["opt"])))
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


def _referenced(directory: Path) -> set[Path]:
    """The stored files some ``*.json`` of ``directory`` names."""
    referenced = set()
    for meta_path in directory.glob(f"*{META_SUFFIX}"):
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(meta, dict) and isinstance(meta.get("files"), dict):
            referenced.update((directory / relative).resolve() for relative in meta["files"])
    return referenced


def _remove_unreferenced(directory: Path) -> list[Path]:
    store = directory / STORE
    if not store.is_dir():
        return []
    referenced = _referenced(directory)
    removed = []
    for path in store.iterdir():
        if path.is_file() and path.resolve() not in referenced:
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def tidy_checkpoint_dir(directory: str | Path) -> list[Path]:
    """Remove what a killed save left behind and repair the ``NAME.*`` files; call it holding the run's lock.

    Removes the temporary files of interrupted atomic writes (``.last.pdopt.*.tmp``)
    and stored files no JSON names, and points each ``NAME.pdparams`` / ``NAME.pdopt``
    at the files its ``NAME.json`` names when a kill came between the JSON and them.

    Returns:
        list[Path]: the files removed.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for folder in (directory, directory / STORE):
        if folder.is_dir():
            for path in folder.glob(".*.tmp"):
                path.unlink(missing_ok=True)
                removed.append(path)
    removed += _remove_unreferenced(directory)
    for meta_path in sorted(directory.glob(f"*{META_SUFFIX}")):
        name = meta_path.stem
        try:
            files = checkpoint_files(directory, name)
        except CheckpointError:
            continue
        visible = checkpoint_paths(directory, name)
        for role, stored in files.items():
            if stored != visible[role] and not (visible[role].is_file() and os.path.samefile(stored, visible[role])):
                _publish(stored, visible[role])
    if removed:
        logger.info("removed %d file(s) an interrupted save left in %s", len(removed), directory)
    return removed
