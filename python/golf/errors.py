"""The golf error family. Messages name the file or argument, the field, what was expected and what was found."""

from __future__ import annotations

import os


class GolfError(Exception):
    """Base of every error golf raises on purpose (bad input, bad config, over budget)."""


def _describe(message: str, file=None, field=None, expected=None, found=None) -> str:
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


class DataError(GolfError):
    """A shard, tokenizer or dataset that is not what the challenge format says it must be."""

    def __init__(self, message: str, *, file=None, field=None, expected=None, found=None):
        self.file, self.field, self.expected, self.found = file, field, expected, found
        super().__init__(_describe(message, file, field, expected, found))


class ArtifactError(GolfError):
    """A model artifact that is truncated, corrupt, or over the size cap."""


class BudgetError(GolfError):
    """A run that cannot fit its wall-clock or byte budget."""


class ConfigError(GolfError):
    """A setting (flag, env name or preset value) that is invalid or inconsistent."""
