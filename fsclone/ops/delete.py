"""The delete pass, in two phases so that a guard can refuse before anything is removed.

Phase 1 (``delete`` chunks, or the listing chunk of a ``sync``) compares a source directory that
was listed completely with its target and plans the target entries missing from the source, or
whose kind (directory or not) the source changed: a type swap removes the old entry, a whole
subtree perhaps, so it is a deletion like any other. Phase 2 (``unlink`` chunks, once the
coordinator's guards passed) removes them, checking each name once more against the source, and
restores the parent directory's times; a sync then copies a swapped name anew. Subtrees are
counted and removed by chunks of their own (fsclone.ops.subtree).
A source directory that cannot be listed plans nothing, and nothing below it is visited.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Collection, Mapping

from fsclone.chunk import Chunk, Group, new_id
from fsclone.fs import dirs, remove
from fsclone.ops import mountguard
from fsclone.ops.context import Context, Outcome, on_both_dirs
from fsclone.ops.dirmeta import apply_dir_meta
from fsclone.ops.subtree import prune
from fsclone.schema import staging_pass, temp_pass
from fsclone.stats import counters as C
from fsclone.text import printable


def plan_deletes(ctx: Context, out: Outcome, sfd: int, dfd: int,
                 source: Mapping[str, bool], confirm: Callable[[], None] | None = None,
                 ) -> dict[str, bool]:
    """Plan removal of the target entries that the complete source listing ``source`` (name: is
    a directory) lacks or has with the other kind; a planned directory's entries are counted by
    ``count`` chunks. Excluded names, the mount points ``--one-file-system`` skips and staging
    directories at the root (this pass's; another pass's is swept at its start) are never
    planned; fsclone's own temp files are planned uncounted. Returns the target listing
    (name: is a directory), from d_type: no stat per target entry. Raises NotTheSource, before
    anything is planned, when the source directory is not what the target was copied from
    (fsclone.ops.mountguard; the caller checked it was mounted). ``confirm``: called once
    something is to go, before anything is planned; it raises to plan nothing."""
    chunk = out.chunk
    target = dirs.list_kinds(dfd)
    gone = [name for name, is_dir in target.items() if _goes(ctx, out, name, is_dir, source)
            and not mountguard.protected(ctx, sfd, name, source)]
    if gone and confirm is not None:
        confirm()
    temps = {name for name in gone if ours(name, target[name])}
    if len(temps) < len(gone):
        mountguard.check_emptied(ctx, out, sfd, dfd, source)
    dst_dev = os.fstat(dfd).st_dev if gone else 0
    planned: list[str] = []
    entries = 0
    for name in gone:
        is_dir = target[name]
        rel = out.path(name)
        if name in temps:
            planned.append(name)  # a temp file left by a dead run: not news to anyone
            continue
        if is_dir and mountguard.target_mount(dfd, name, dst_dev):
            out.fail(rel, mountguard.TARGET_MOUNT)
            continue
        planned.append(name)
        entries += 1
        if name not in source:
            out.act("delete", rel)
        else:
            out.count(C.TYPE_CHANGED)
            out.act("delete", rel, "(type changed)")
        if is_dir:
            out.child("count", rel)
    if planned:
        out.result.deletions.append((chunk.path, tuple(planned), entries))
        out.count(C.PLANNED_DELETES, entries)
    return target


def planned_here(out: Outcome) -> tuple[str, ...]:
    """The names this chunk planned for deletion in its own directory."""
    return next((names for path, names, _ in out.result.deletions if path == out.chunk.path),
                ())


def unplan(out: Outcome, names: Collection[str]) -> None:
    """Take ``names`` out of this chunk's planned deletions, with their count and their lines:
    they were moved to another name in the target, not removed (fsclone.ops.moves)."""
    if not names:
        return
    deletions = out.result.deletions
    for i, (path, planned, entries) in enumerate(deletions):
        if path == out.chunk.path:
            left = tuple(name for name in planned if name not in names)
            taken = len(planned) - len(left)
            deletions[i] = (path, left, entries - taken)
            out.count(C.PLANNED_DELETES, -taken)
    out.result.deletions = [d for d in deletions if d[1]]
    if out.shows:
        shown = {f"delete {printable(out.path(name))}" for name in names}
        out.result.actions = [line for line in out.result.actions if line not in shown]


def _goes(ctx: Context, out: Outcome, name: str, is_dir: bool,
          source: Mapping[str, bool]) -> bool:
    """Whether a target entry is to be removed: the source lacks it or has the other kind, and
    it is neither excluded nor a staging directory at the root."""
    if source.get(name) == is_dir:
        return False
    if not out.chunk.path and (name == ctx.staging or (is_dir and staging_pass(name))):
        return False
    return not ctx.filters.excluded(out.path(name), is_dir)


def ours(name: str, is_dir: bool) -> bool:
    """Whether a target entry is one of fsclone's temp files (fsclone makes no temp
    directories, and a user's name cannot carry a pass id by accident)."""
    return not is_dir and temp_pass(name) is not None


@on_both_dirs
def run_delete(ctx: Context, out: Outcome, sfd: int, dfd: int) -> None:
    """Phase 1: plan this directory's deletions, and walk on into directories on both sides."""
    mountguard.check_mounted(ctx, out.chunk.path, sfd)
    kinds = dirs.list_kinds(sfd)  # raises unless the listing is complete
    out.count(C.SCANNED, len(kinds))
    target = plan_deletes(ctx, out, sfd, dfd, kinds)
    for name, is_dir in target.items():
        rel = out.path(name)
        if kinds.get(name) and is_dir and not ctx.filters.excluded(rel, True) \
                and not mountguard.skipped(ctx, out, name, sfd):
            out.child("delete", rel)


@on_both_dirs
def run_unlink(ctx: Context, out: Outcome, sfd: int, dfd: int) -> None:
    """Phase 2: remove the planned names still absent from the source or of the other kind
    there (a directory by ``prune`` chunks), then restore the times: at once, or when the
    subtrees are gone. In a sync, a swapped name is then copied anew."""
    # a non-root pass removes entries from its own read-only directory (the times and mode
    # are restored below, or by the subtrees' barrier)
    changed = dirs.make_writable(dfd)
    removed = 0
    subtrees: list[str] = []
    swapped: list[str] = []
    for name in out.chunk.names or ():
        rel = out.path(name)
        try:
            dst = dirs.lstat_at(name, dfd)
            if dst is None:
                continue
            is_dir = stat.S_ISDIR(dst.st_mode)
            mine = ours(name, is_dir)
            src = None if mine else dirs.lstat_at(name, sfd)
            if src is not None and stat.S_ISDIR(src.st_mode) == is_dir:
                out.act("kept", rel, "(back in the source)")
                continue
            if src is not None:
                swapped.append(name)
            if is_dir:
                subtrees.append(name)
                continue
            remove.unlink(name, dfd, ctx.dst_flags)
            changed = True
            removed += not mine
        except FileNotFoundError:
            continue
        except OSError as exc:
            out.fail(rel, exc)
    out.count(C.DELETED, removed)
    resync = swapped if ctx.spec.op == "sync" else []
    if subtrees or resync:
        _after_removal(out, subtrees, resync)
    elif changed:
        apply_dir_meta(ctx, out, out.chunk.path, sfd, dfd)


def _after_removal(out: Outcome, subtrees: list[str], resync: list[str]) -> None:
    """Prune the planned subtrees; copy the ``resync`` names (swapped in the source) anew once
    the old entries are gone; restore the directory's times when all of it is done."""
    path = out.chunk.path
    top = new_id()
    members: list[Chunk] = []
    first = [name for name in subtrees if name in resync]
    members += [prune(out.path(name), top) for name in subtrees if name not in resync]
    if resync:
        copy = Chunk(op="sync", path=path, names=tuple(resync), group=top)
        if first:
            group = new_id()
            out.result.children.extend(prune(out.path(name), group) for name in first)
            out.result.groups.append(Group(group, len(first), copy))
        else:
            members.append(copy)
    out.result.children.extend(members)
    size = len(members) + bool(first)
    out.result.groups.append(Group(top, size, Chunk(op="dirmeta", path=path)))
