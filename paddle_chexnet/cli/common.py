"""What every command shares: logging, the one-line error at the end of a user mistake, its exit code.

Each command is a module of this package with ``get_args_parser()`` (the
parser), ``main(args) -> int`` (the work, returning an exit code) and
``entry(argv=None) -> int``, which joins them through :func:`run_command`. The
scripts (``train.py``, ``eval.py``, ``tools/*.py``) and the console scripts of
``pyproject.toml`` only call ``entry``.

Exit codes: 0 done; 1 a user error (a path, a flag, a setting: the message says
which and what to do); 2 a file that cannot be used (a corrupt or foreign
checkpoint, a diverged training run); 130 interrupted with Ctrl-C.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import warnings
from collections.abc import Callable, Sequence

from paddle_chexnet.errors import UnusableFileError, UserError

logger = logging.getLogger("paddle_chexnet")

EXIT_OK, EXIT_USER_ERROR, EXIT_UNUSABLE_FILE, EXIT_INTERRUPTED = 0, 1, 2, 130


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show defaults, except ``None`` (the help then says what happens) and ``False`` of switches."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False or action.default is argparse.SUPPRESS \
                or "%(default)" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


# the handler ``import paddle`` puts on the root logger (paddle/base/log_helper.py), recognised by its format
_PADDLE_LOG_FORMAT = "[%(asctime)-15s] [%(levelname)8s] %(filename)s:%(lineno)s - %(message)s"


def setup_logging(verbose: bool = False, main_process: bool = True) -> None:
    """One format for every command; other ranks of a distributed run log warnings only.

    Paddle adds a handler with its own format to the root logger when it is imported; it is
    replaced, so a command's errors read as one plain line. Other handlers (a test's) are kept.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler.formatter, "_fmt", None) == _PADDLE_LOG_FORMAT:
            root.removeHandler(handler)
    level = logging.DEBUG if verbose else (logging.INFO if main_process else logging.WARNING)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    root.setLevel(level)


def _log_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """``warnings.showwarning`` for commands: one log line, without the source line Python echoes."""
    logging.getLogger("py.warnings").warning("%s", message)


@contextlib.contextmanager
def warnings_as_log_lines():
    """Inside the block, each warning is one log line (``WARNING <message>``) instead of two lines of stderr."""
    previous = warnings.showwarning
    warnings.showwarning = _log_warning
    try:
        yield
    finally:
        warnings.showwarning = previous


def user_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions that end a command with their message and exit code 1 (no traceback)."""
    return (UserError, ValueError, ImportError, OSError)


def _message(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def run_command(
    get_args_parser: Callable[[], argparse.ArgumentParser],
    main: Callable[[argparse.Namespace], int | None],
    argv: Sequence[str] | None = None,
    unusable: tuple[type[BaseException], ...] = (),
) -> int:
    """Parse ``argv``, run ``main`` and turn user errors into one line and an exit code.

    Args:
        get_args_parser (Callable): returns the command's parser.
        main (Callable): the work; returns an exit code (``None`` counts as 0).
        argv (Sequence[str], optional): the arguments; ``None`` reads ``sys.argv``. Default: None.
        unusable (tuple[type, ...], optional): further exception types that mean "this file cannot be
            used" (exit code 2), besides :class:`UnusableFileError`. Default: ().
    """
    args = get_args_parser().parse_args(argv)
    setup_logging(getattr(args, "verbose", False))
    try:
        with warnings_as_log_lines():
            code = main(args)
    except KeyboardInterrupt:
        logger.error("interrupted")
        return EXIT_INTERRUPTED
    except (UnusableFileError, *unusable) as exc:
        logger.debug("traceback", exc_info=True)  # --verbose shows where it came from
        logger.error("error: %s", _message(exc))
        return EXIT_UNUSABLE_FILE
    except user_error_types() as exc:
        logger.debug("traceback", exc_info=True)
        logger.error("error: %s", _message(exc))
        return EXIT_USER_ERROR
    return EXIT_OK if code is None else int(code)


def exit_with(entry: Callable[[Sequence[str] | None], int]) -> None:
    """``sys.exit(entry())``: what a script's ``if __name__ == "__main__":`` does."""
    sys.exit(entry(None))
