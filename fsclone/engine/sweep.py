"""What dead passes and dead runs left in a target: hard-link staging directories at its root,
the temp files of the unfinished passes a new pass supersedes, and those a pass's own dead or
duplicate chunk runs left.

Run at the start of a copy or sync, under the target lock (no other pass of this state
directory runs there), before anything is written, and once more before its cleanup phase.
Only names that are fsclone's by their form and pass id (:func:`~fsclone.schema.staging_pass`,
:func:`~fsclone.schema.temp_pass`) are removed; a temp file is looked for only in the
directories the dead pass still had work in (its record's outstanding and barrier chunks, and
where its redone chunks ran), so the sweep never walks the tree.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from pathlib import Path

from fsclone.fs import dirs, remove
from fsclone.lifecycle import SUPERSEDED
from fsclone.schema import staging_pass, temp_pass
from fsclone.spec import PassSpec
from fsclone.state.queries import read_chunks, read_redone, resumable_by_id, unfinished_on
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
            left = [c.path for c in read_chunks(state / old)] + read_redone(state / old)
            remove_temps(spec.dst, old, left)
        superseded.append(old)
    return superseded


def remove_temps(dst: str, pass_id: str, paths: Iterable[str], keep_times: bool = False) -> int:
    """Remove pass ``pass_id``'s temp files from the target directories ``paths``; returns
    how many went. A directory gone or unreadable is skipped: nothing of ours can be in it.
    ``keep_times``: a directory whose metadata the pass has set gets its times back after a
    removal (the unlink moved its mtime)."""
    removed = 0
    with dirs.opened(dirs.open_root(dst)) as root:
        for path in sorted(set(paths)):
            try:
                fd = dirs.open_path(root, path)
            except OSError:
                continue
            with dirs.opened(fd):
                before = os.fstat(fd)
                ours = [name for name in dirs.list_names(fd) if temp_pass(name) == pass_id]
                for name in ours:
                    with contextlib.suppress(OSError):  # a directory is not one of ours
                        remove.unlink(name, fd)
                        removed += 1
                if ours and keep_times:
                    os.utime(fd, ns=(before.st_atime_ns, before.st_mtime_ns))
    return removed


def remove_own_temps(dst: str, pass_id: str, redone: Iterable[str]) -> int:
    """At the end of a pass's work: the temp files its dead or duplicate runs left in the
    directories its redone chunks ran in (``redone``). A redone chunk leaves them alone, since
    its earlier run may have published and handed a large file's temp to range chunks still
    running; once nothing runs, every temp of the pass left is an orphan."""
    return remove_temps(dst, pass_id, redone, keep_times=True)


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
