"""The errors a user can cause, one class per kind, so the command line can report each as one line.

Each message names what is wrong: the dotted config key, the file with its line and column, or the
checkpoint and the entry that differs.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration problem; the message names the offending dotted key and what is allowed."""


class DataError(ValueError):
    """Input data that does not match its schema or spec; the message names source, row and column."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded into the current model; the message says what differs."""


class RunDirError(RuntimeError):
    """A run directory that cannot be used as asked: another training holds it (the message names
    the holder and the lock file), or a file in it cannot be read."""
