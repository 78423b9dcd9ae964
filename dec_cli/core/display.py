"""Text for one-line messages and tables: untrusted names made safe to print, long name lists cut short."""

from __future__ import annotations


def printable(text: str) -> str:
    """``text`` as is, or as a quoted Python literal when it holds control characters (a newline, an
    escape sequence, an undecodable byte): a file name can then never fake a line of output."""
    return text if text.isprintable() else repr(text)


def shorten(names: list[str], n: int = 5) -> str:
    """The first ``n`` names, comma-separated, and how many there are in all when there are more."""
    return ", ".join(names[:n]) + (f" ... ({len(names)} in all)" if len(names) > n else "")
