"""Typed errors for bad input: every one names the file and the problem on one line."""

from __future__ import annotations

import os


class InputError(ValueError):
    """Bad input the user can fix: a file, the field (if any) and what is wrong with it.

    ``str(err)`` is the one line the CLI prints before exiting with status 2.
    """

    def __init__(self, path: str | os.PathLike | None, problem: str, field: str | None = None):
        self.path = os.fspath(path) if path is not None else None
        self.field = field
        self.problem = problem
        where = self.path or "<input>"
        what = f"{field}: {problem}" if field else problem
        # One line whatever the input put into the message (a value, a file name).
        super().__init__(f"{where}: {what}".replace("\r", "\\r").replace("\n", "\\n"))


class LabelError(InputError):
    """A label, record or camera model that cannot be read: missing, malformed or inconsistent."""


class ModelError(LabelError):
    """A camera model whose numbers are unusable (NaN, degenerate vectors, unknown type)."""
