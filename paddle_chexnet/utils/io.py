"""Atomic file writes: a reader (or a crash) never sees half a file.

Everything the package writes that a user would miss (checkpoints, CSVs,
converted weights) goes to a temporary file in the destination's folder and is
then renamed over the destination, which POSIX and Windows do atomically on
one file system.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# Read once at import: os.umask can only be read by setting it, which would race with other threads later.
_UMASK = _read_umask()


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    Examples:
        >>> with atomic_path("out.txt") as tmp:
        ...     _ = tmp.write_text("done")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_paddle_save(obj: object, path: str | Path) -> None:
    """``paddle.save`` to ``path`` atomically."""
    import paddle

    with atomic_path(path) as tmp:
        paddle.save(obj, str(tmp))


def ensure_output_dir(path: str | Path, flag: str = "--output-dir") -> Path:
    """Make sure results can be written to ``path`` before any work starts: a writable folder, made if needed.

    Raises:
        UserError: ``path`` is a file, cannot be created or is not writable; the message names ``flag``.
    """
    from paddle_chexnet.errors import UserError

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} is a file, not a folder; choose another {flag}")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{flag} {path} cannot be created ({exc.strerror or exc}); choose another {flag}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path} is not writable; choose another {flag}")
    return path


def read_json_file(path: str | Path, missing_hint: str = "") -> object:
    """The JSON value in ``path``; one-line errors name the file (and, when missing, what to do).

    Raises:
        FileNotFoundError: no such file (``missing_hint`` is appended, e.g. how to make one).
        ValueError: not valid JSON (the line is given).
    """
    import json

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file" + (f" ({missing_hint})" if missing_hint else ""))
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        where = f"line {exc.lineno}: {exc.msg}" if isinstance(exc, json.JSONDecodeError) else str(exc)
        raise ValueError(f"{path}: not valid JSON ({where})") from None
