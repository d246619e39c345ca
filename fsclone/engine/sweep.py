"""What dead passes left in a target: hard-link staging directories at its root, and the temp
files of the unfinished passes a new pass supersedes.

Run at the start of a copy or sync, under the target lock (no other pass of this state directory
runs there), before anything is written. Only names that are fsclone's by their form and pass id
(:func:`~fsclone.ops.context.staging_pass`, :func:`~fsclone.ops.context.temp_pass`) are removed;
a temp file is looked for only in the directories the dead pass still had work in (its record's
outstanding and barrier chunks), so the sweep never walks the tree.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from pathlib import Path

from fsclone.chunk import Chunk
from fsclone.fs import dirs, remove
from fsclone.lifecycle import SUPERSEDED
from fsclone.schema import staging_pass, temp_pass
from fsclone.spec import PassSpec
from fsclone.state.queries import read_chunks, resumable_by_id, unfinished_on
from fsclone.state.record import mark

#: the passes that leave temp files and staging directories in a target
WRITERS = ("copy", "sync")


def supersede(state: Path, spec: PassSpec) -> list[str]:
    """Mark the unfinished copy and sync passes on ``spec``'s target superseded (never to be
    resumed: this new pass goes over the same ground) and remove the temp files they left;
    returns their ids."""
    superseded = []
    for old_spec in unfinished_on(state, spec.dst, WRITERS):
        old = old_spec.id
        if old == spec.id:
            continue
        mark(state / old, SUPERSEDED)
        if os.path.isdir(spec.dst):
            remove_temps(spec.dst, old, read_chunks(state / old))
        superseded.append(old)
    return superseded


def remove_temps(dst: str, pass_id: str, chunks: Iterable[Chunk]) -> int:
    """Remove pass ``pass_id``'s temp files from the target directories of ``chunks``; returns
    how many went. A directory gone or unreadable is skipped: nothing of ours can be in it."""
    removed = 0
    with dirs.opened(dirs.open_root(dst)) as root:
        for path in sorted({c.path for c in chunks}):
            try:
                fd = dirs.open_path(root, path)
            except OSError:
                continue
            with dirs.opened(fd):
                for name in dirs.list_names(fd):
                    if temp_pass(name) == pass_id:
                        with contextlib.suppress(OSError):  # a directory is not one of ours
                            remove.unlink(name, fd)
                            removed += 1
    return removed


def remove_staging(state: Path, dst: str, keep: str) -> list[str]:
    """Remove the staging directories at the target root of every pass but ``keep`` and
    those still resumable; returns the pass ids whose directory went."""
    if not os.path.isdir(dst):
        return []
    removed = []
    with dirs.opened(dirs.open_root(dst)) as root:
        for name in dirs.list_names(root):
            owner = staging_pass(name)
            if owner is None or owner == keep or resumable_by_id(state, owner):
                continue
            try:
                remove.remove_flat_tree(root, name)
            except OSError:  # not flat, so not of our making after all: left alone
                continue
            removed.append(owner)
    return removed
