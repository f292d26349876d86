"""Exceptions raised by the trace package."""

from __future__ import annotations

__all__ = ["TraceError", "TraceFormatError"]


class TraceError(Exception):
    """Base class of every error the trace package raises on bad input."""


class TraceFormatError(TraceError):
    """A source or trace file that does not match its format.

    The message names the file, the 1-based row (line for JSON lines, data row
    for CSV) and the field, so that the user can find and fix the value.
    """

    def __init__(
        self, path: str, message: str, row: int | None = None, field: str | None = None
    ) -> None:
        self.path = path
        self.row = row
        self.field = field
        where = path
        if row is not None:
            where += f", row {row}"
        if field is not None:
            where += f", field '{field}'"
        super().__init__(f"{where}: {message}")
