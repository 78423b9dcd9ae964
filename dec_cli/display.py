"""Untrusted text (file names, decoder messages) made safe to print on a terminal line."""

from __future__ import annotations


def printable(text: str) -> str:
    """``text`` as is, or as a quoted Python literal when it holds control characters (a newline, an
    escape sequence, an undecodable byte): a file name can then never fake a line of output."""
    return text if text.isprintable() else repr(text)
