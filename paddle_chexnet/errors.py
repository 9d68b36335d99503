"""The two kinds of mistake a user can make, which every command reports in one line.

* :class:`UserError`: a path, a flag or a setting is wrong; the message says which and what to do
  (commands exit with code 1).
* :class:`UnusableFileError`: a file exists but cannot be used (corrupt, foreign, or holding
  non-finite weights); commands exit with code 2, as ``tools/convert_torch.py`` always has.
"""
from __future__ import annotations


class UserError(ValueError):
    """A mistake in the command line or the settings, explained by the message."""


class UnusableFileError(ValueError):
    """A file that exists but cannot be used: corrupt, of another kind, or with non-finite weights."""
