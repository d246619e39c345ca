"""Mount points in the walk: the per-directory deletion guard, and ``--one-file-system``.

An unmounted part of the source looks like a directory its users emptied: an empty directory
(or one holding a stray file written while nothing was mounted) on the parent filesystem. A
delete or sync that believed it would remove the whole copy of that filesystem from the target.
Before a directory's deletions are planned, a source directory that does not look like what the
target was copied from refuses them: one item error at the directory, nothing below it planned,
copied or walked (:class:`NotTheSource`). It refuses when

- the directory was a mount point of the source at an earlier pass (the recorded layout, see
  fsclone.engine.layout) and is none now, whatever it holds (a copy pass refuses it too: the
  target's copy of that filesystem is not overwritten with what lies below its mount point);
- or, with deletions to plan and no source entry (excluded names aside), when the source
  directory is the root of a mount (an empty filesystem mounted there: a fresh one, or an
  automount not triggered) or the target directory is one (the source's counterpart, not
  mounted, left its empty mount point).

A directory emptied by its users is neither, and its deletions go ahead. A deletion never
crosses into another filesystem mounted in the target: a planned directory that is a mount
point, or one met below a planned directory (fsclone.ops.subtree), is an item error of its
own, and the rest of the plan stands.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from fsclone.chunk import join
from fsclone.fs import dirs, mounts
from fsclone.ops.context import Context, Outcome
from fsclone.stats import counters as C
from fsclone.text import printable


class NotTheSource(OSError):
    """A source directory is not the filesystem its target was copied from: nothing below it
    is planned for deletion, copied or walked; the directory is one item error."""


def check_mounted(ctx: Context, path: str, sfd: int) -> None:
    """Refuse a directory recorded as a mount point of the source that is none now: the copy
    walk (copy and sync) and the delete walk check each directory before listing it."""
    if path in ctx.source_mounts and not mounts.is_mount_root(sfd):
        raise NotTheSource("was a mount point of the source at earlier passes and is none now "
                           "(is it mounted?): nothing below it copied or deleted")


def check_emptied(ctx: Context, out: Outcome, sfd: int, dfd: int,
                  source: Mapping[str, bool]) -> None:
    """Refuse deletions below an empty source directory where a mount begins on either side."""
    if any(not ctx.filters.excluded(out.path(name), is_dir) for name, is_dir in source.items()):
        return
    if mounts.is_mount_root(sfd):
        raise NotTheSource("the source directory is an empty mounted filesystem while its "
                           "target is not empty (a fresh mount or an automount?): nothing "
                           "below it deleted")
    if mounts.is_mount_root(dfd):
        raise NotTheSource("the target directory is a mount point and its source an empty "
                           "directory (is the source's filesystem mounted?): nothing below it "
                           "deleted")


#: the item error at a target mount point a deletion would have gone through
TARGET_MOUNT = "is a mount point on the target: not deleted through"


def subdirs_on_fs(out: Outcome, fd: int, path: str, kinds: Mapping[str, bool],
                  report: bool) -> list[str]:
    """The subdirectories (``kinds``: name: is a directory) of the target directory ``path``,
    open at ``fd``, on its own filesystem; a mount point among them is an item error when
    ``report``."""
    dev = os.fstat(fd).st_dev
    found = []
    for name, is_dir in kinds.items():
        if not is_dir:
            continue
        if target_mount(fd, name, dev):
            if report:
                out.fail(join(path, name), TARGET_MOUNT)
            continue
        found.append(name)
    return found


def target_mount(dfd: int, name: str, dst_dev: int) -> bool:
    """Whether the target subdirectory ``name`` of ``dfd`` (on device ``dst_dev``) is on
    another device: a mount point, never deleted through."""
    return os.stat(name, dir_fd=dfd, follow_symlinks=False).st_dev != dst_dev


def other_filesystem(ctx: Context, out: Outcome, name: str, st: os.stat_result) -> bool:
    """Whether ``--one-file-system`` skips the source directory ``name`` (lstat ``st``): on
    another device than the source root. A skip is counted and always listed."""
    if not ctx.spec.one_file_system or st.st_dev == ctx.src_dev:
        return False
    path = out.path(name)
    out.count(C.SKIP_MOUNTS)
    out.result.skipped.append(path)
    out.result.actions.append(f"skip {printable(path)} (another filesystem: --one-file-system)")
    return True


def skipped(ctx: Context, out: Outcome, name: str, sfd: int) -> bool:
    """:func:`other_filesystem` for a walk that listed ``sfd`` without stats (its lstat is
    taken only under ``--one-file-system``)."""
    if not ctx.spec.one_file_system:
        return False
    st = dirs.lstat_at(name, sfd)
    return st is not None and other_filesystem(ctx, out, name, st)


def protected(ctx: Context, sfd: int, name: str, source: Mapping[str, bool]) -> bool:
    """Whether ``--one-file-system`` keeps the target entry ``name`` off the deletion plan: its
    source counterpart (``source``: name: is a directory) is a directory on another
    filesystem, left alone like an excluded entry, so a type swap there is not carried out."""
    if not (ctx.spec.one_file_system and source.get(name)):
        return False
    st = dirs.lstat_at(name, sfd)
    return st is not None and st.st_dev != ctx.src_dev
