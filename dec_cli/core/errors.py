"""User-facing errors: one line, a hint, and the documented exit code.

Library code raises these; only `cli.py` turns them into `error: ...` and an exit.
"""

from __future__ import annotations

EXIT_FAILURE = 1
EXIT_USAGE = 2


class DecError(Exception):
    """A failure the user can act on (exit code 1 unless stated)."""

    exit_code = EXIT_FAILURE

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        text = f"error: {self.message}"
        return f"{text} (hint: {self.hint})" if self.hint else text


class UsageError(DecError):
    """Bad arguments or input paths (exit code 2)."""

    exit_code = EXIT_USAGE


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its type name when empty), cut to ``limit`` characters.

    Used wherever a library error is quoted inside one of our one-line messages.
    """
    text = exc.message if isinstance(exc, DecError) else str(exc)
    text = text.strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]
