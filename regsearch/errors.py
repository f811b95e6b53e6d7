"""User-facing errors: the CLI prints them as one line and exits 2."""

from __future__ import annotations

from collections.abc import Sequence

EXIT_USER_ERROR, EXIT_INTERRUPTED, EXIT_STOPPED, EXIT_BUG = 2, 130, 143, 1
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports for a Unix tool cut off by it


class RegsearchError(Exception):
    """An error caused by the user's input or environment, not by a bug.

    The message alone must tell the user what was wrong, where, and how to fix it.
    """


class SpecError(RegsearchError):
    """A study file that cannot be used as written: one line per problem, all at once."""

    def __init__(self, source: str, field: str, message: str,
                 more: Sequence[tuple[str, str]] = ()) -> None:
        self.problems = [(field, message), *more]
        super().__init__("\n".join(f"{source}: {f}: {m}" if f else f"{source}: {m}"
                                   for f, m in self.problems))
        self.source = source
        self.field = field


class DataError(RegsearchError):
    """A data set that is missing, unreadable or unusable for training."""


class StudyMismatchError(RegsearchError):
    """An existing study was created from a different spec."""


class StorageError(RegsearchError):
    """A storage URL that cannot be reached or used."""
