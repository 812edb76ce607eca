"""The golf error family. Messages name the file or argument, the field, what was expected and what was found:

    DataError("token id outside the tokenizer's vocabulary", file=path, field="token[12]", expected="< 1024",
              found=2000)   ->   "path: token[12]: token id outside ... (expected < 1024, found 2000)"
"""

from __future__ import annotations

import os


def describe(message: str, file=None, field=None, expected=None, found=None) -> str:
    """`file: field: message (expected ..., found ...)`, each part only where given."""
    parts = []
    if file is not None:
        parts.append(os.fspath(file))
    if field is not None:
        parts.append(str(field))
    head = ": ".join(parts)
    text = f"{head}: {message}" if head else message
    if expected is not None or found is not None:
        text += f" (expected {expected}, found {found})"
    return text


class GolfError(Exception):
    """Base of every error golf raises on purpose (bad input, bad config, over budget). The keyword parts are
    kept as attributes (file, field, expected, found) for callers that inspect them."""

    def __init__(self, message: str, *, file=None, field=None, expected=None, found=None):
        self.file, self.field, self.expected, self.found = file, field, expected, found
        super().__init__(describe(message, file, field, expected, found))


class DataError(GolfError):
    """A shard, tokenizer or dataset that is not what the challenge format says it must be."""


class ArtifactError(GolfError):
    """A model artifact that is truncated, corrupt, or over the size cap."""


class BudgetError(GolfError):
    """A run that cannot fit its wall-clock or byte budget."""


class ConfigError(GolfError):
    """A setting (flag, env name or preset value) that is invalid or inconsistent."""


class DistributedError(GolfError):
    """Ranks of one run that disagree (their weights after training) or a process group that cannot form."""


class OutputError(GolfError):
    """A file a run must write that cannot be written: a read-only or full disk, a path that is not a folder, a run
    directory another run holds."""


class InterruptedRun(GolfError):
    """SIGINT or SIGTERM stopped a run (after it saved what it could); `signal` is the signal's number."""

    def __init__(self, message: str, *, signal: int):
        self.signal = signal
        super().__init__(message)
