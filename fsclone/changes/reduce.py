"""Coalescing dirty directories: the fewest chunks that cover what a burst of events touched."""

from __future__ import annotations

from collections.abc import Iterable

from fsclone.changes.feed import DirtyDir


def coalesce(dirs: Iterable[DirtyDir]) -> list[DirtyDir]:
    """One entry per path (recursive wins), entries below a recursive ancestor dropped (that
    ancestor's chunk syncs them), sorted by path."""
    recursive: dict[bytes, bool] = {}
    for d in dirs:
        recursive[d.path] = recursive.get(d.path, False) or d.recursive
    deep = {path for path, rec in recursive.items() if rec}
    return [DirtyDir(path, rec) for path, rec in sorted(recursive.items())
            if not any(a in deep for a in ancestors(path))]


def ancestors(path: bytes) -> list[bytes]:
    """The directories above ``path``, nearest first, ending with b"" (SRC); [] for SRC."""
    out: list[bytes] = []
    while path:
        path = path.rpartition(b"/")[0]
        out.append(path)
    return out
