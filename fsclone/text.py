"""Paths as text a person reads: one safe terminal line, whatever bytes a name holds."""

from __future__ import annotations

import os


def printable(path: str) -> str:
    """A path as one safe terminal line: undecodable bytes and control characters escaped."""
    text = os.fsencode(path).decode("utf-8", "backslashreplace")
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text) or "."
