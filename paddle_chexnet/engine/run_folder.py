"""One training process per run folder, and no finished run replaced without being asked.

``OUTPUT_DIR/RUN_NAME`` holds a run's checkpoints. :func:`claim_run_folder`
(rank 0, before any work) takes an exclusive lock on ``RUN/.lock`` for the
whole run, so a second ``train.py`` with the same run name stops at once
instead of overwriting the first one's files; the operating system releases
the lock when the process ends in any way (``kill -9`` included), so a crash
never leaves a stale lock. It then removes what an interrupted save left
behind (:func:`~paddle_chexnet.engine.checkpoint.tidy_checkpoint_dir`) and
refuses to start a new run over a folder that holds checkpoints, unless
``--resume`` (continue it) or ``--overwrite`` (replace it) says what to do.
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import shutil
import socket
from pathlib import Path
from typing import IO

from paddle_chexnet.engine.checkpoint import META_SUFFIX, OPT_SUFFIX, PARAMS_SUFFIX, STORE, tidy_checkpoint_dir
from paddle_chexnet.errors import UserError

logger = logging.getLogger(__name__)

LOCK_NAME = ".lock"


class RunFolderInUseError(UserError):
    """Another process is training into the same run folder."""


class RunExistsError(UserError):
    """The run folder holds a run, and neither ``--resume`` nor ``--overwrite`` was given."""


class RunLock:
    """An exclusive, non-blocking lock on ``DIRECTORY/.lock`` (``fcntl.flock``), released by :meth:`release`.

    Args:
        directory (str | Path): the run folder (created if needed).

    Raises:
        RunFolderInUseError: another process holds the lock; the message names it.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / LOCK_NAME
        self._handle: IO[str] | None = None
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock, as before
            logger.debug("fcntl is not available; %s is not locked", self.directory)
            return
        handle = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise RunFolderInUseError(
                f"run folder {self.directory} is in use by {holder}; wait for that run to finish, or give this "
                "one another --run-name (or --output-dir)"
            ) from None
        handle.seek(0)
        handle.truncate()
        started = datetime.datetime.now().isoformat(timespec="seconds")
        handle.write(f"train.py (pid {os.getpid()} on {socket.gethostname()}, started {started})\n")
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        """Give the lock back (closing the file releases it)."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def describe_run(directory: str | Path) -> str | None:
    """``'epoch 3 of 20, best mean AUROC 0.8123 at epoch 2'`` for a folder with checkpoints, else ``None``."""
    directory = Path(directory)
    for name in ("last", "best"):
        meta_path = directory / f"{name}{META_SUFFIX}"
        if not meta_path.is_file():
            continue
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            epoch = int(meta["epoch"]) + 1
            total = meta.get("config", {}).get("epochs", "?")
            state = meta.get("run_state", {})
            best = state.get("best_metric")
        except (OSError, ValueError, KeyError, TypeError):
            return f"checkpoint {meta_path.name}"
        text = f"checkpoint of epoch {epoch} of {total}"
        if best is not None:
            text += f", best mean AUROC {float(best):.4f} at epoch {int(state.get('best_epoch', -1)) + 1}"
        return text
    if any(directory.glob(f"*{PARAMS_SUFFIX}")):
        return "weights files"
    return None


def remove_checkpoints(directory: str | Path) -> None:
    """Delete a run folder's checkpoint files (``*.pdparams``, ``*.pdopt``, ``*.json``, ``.store/``)."""
    directory = Path(directory)
    for suffix in (META_SUFFIX, PARAMS_SUFFIX, OPT_SUFFIX):  # the JSON first: no half checkpoint looks whole
        for path in directory.glob(f"*{suffix}"):
            path.unlink(missing_ok=True)
    shutil.rmtree(directory / STORE, ignore_errors=True)


def claim_run_folder(directory: str | Path, resume: bool, overwrite: bool) -> RunLock:
    """Lock the run folder, tidy it, and check that this run may write there.

    Args:
        directory (str | Path): ``OUTPUT_DIR/RUN_NAME``.
        resume (bool): the run continues the folder's checkpoint.
        overwrite (bool): the run replaces what the folder holds (its checkpoints are deleted now).

    Returns:
        RunLock: hold it until the run ends.

    Raises:
        RunFolderInUseError: another process trains into ``directory``.
        RunExistsError: ``directory`` holds a run and neither ``resume`` nor ``overwrite`` is set.
    """
    if resume and overwrite:
        raise UserError("--resume continues the run folder's checkpoint and --overwrite deletes it; choose one")
    lock = RunLock(directory)
    try:
        tidy_checkpoint_dir(directory)
        if not resume:
            existing = describe_run(directory)
            if existing is not None and not overwrite:
                raise RunExistsError(
                    f"{directory} already holds a run ({existing}); pass --resume to continue it, --overwrite "
                    "to replace it, or choose another --run-name"
                )
            if existing is not None:
                logger.warning("--overwrite: deleting the run in %s (%s)", directory, existing)
                remove_checkpoints(directory)
    except BaseException:
        lock.release()
        raise
    return lock
