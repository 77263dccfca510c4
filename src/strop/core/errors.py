"""The one exception type that reaches the user as a single line.

Anything raised as ``StropError`` is a user mistake or an unmet precondition:
the CLI prints ``strop: <message>`` and exits with ``exit_code``. Everything
else is a bug and keeps its traceback.
"""
from __future__ import annotations


class StropError(Exception):
    """A user-facing error whose message is one line naming file, line, field or option."""

    exit_code = 2

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


def where(path: object, line: int | None = None) -> str:
    """Format ``file:line`` the way compilers do, so editors can jump to it."""
    return f"{path}:{line}" if line is not None else str(path)
