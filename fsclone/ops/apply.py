"""The copy's apply step: carries out the actions fsclone.ops.plan decided, through the chunk's
TargetDir, and counts what it did. Only a pass that writes makes one: a dry run shows its plan
(fsclone.ops.plan.rehearse) and never gets here."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable

from fsclone.fs.inodeflags import Attrs
from fsclone.fs.side import Xattrs
from fsclone.fs.source import SourceDir
from fsclone.fs.target import TargetDir
from fsclone.ops import links, ranges
from fsclone.ops.context import Context, Outcome
from fsclone.ops.plan import (
    HARD_LINK,
    LARGE,
    MKDIR,
    NEW,
    NODE,
    REPLACE,
    SAME,
    SYMLINK,
    TYPE_CHANGED,
    Action,
)
from fsclone.stats import counters as C


class Applier:
    """Carries out one chunk's actions. Entries whose data turns out current (a claimed hard
    link) join ``unsettled``; large files join ``barrier``. ``layouts``: the Lustre layouts
    the decide step read of the files to copy, by name (empty: the target's defaults)."""

    __slots__ = ("barrier", "ctx", "layouts", "out", "src", "tgt", "unsettled")

    def __init__(self, ctx: Context, out: Outcome, src: SourceDir, tgt: TargetDir,
                 unsettled: list[Action], barrier: ranges.DirBarrier,
                 layouts: dict[str, bytes]) -> None:
        self.ctx, self.out, self.src, self.tgt = ctx, out, src, tgt
        self.unsettled, self.barrier, self.layouts = unsettled, barrier, layouts

    def apply(self, action: Action) -> None:
        kind, name, st, dst = action
        _APPLY[kind](self, name, st, dst)  # a dict, not a method per call: built once

    def new_file(self, name: str, st: os.stat_result, dst: os.stat_result | None) -> None:
        """A file the target lacks: unnamed, where the filesystem has them, else a temp."""
        written = self.tgt.copy_unnamed(self.src, name, st)
        if written is None:
            self.replace(name, st, dst)
            return
        self.out.count(C.COPIED)
        self.out.count(C.BYTES, written)

    def replace(self, name: str, st: os.stat_result, dst: os.stat_result | None) -> None:
        """New content under a temp name, renamed over the old entry."""
        tmp, written = self.tgt.copy_to_temp(self.src, name, st, self._layout(name))
        self.tgt.publish(tmp, name)
        self.out.count(C.COPIED)
        self.out.count(C.BYTES, written)

    def hard_link(self, name: str, st: os.stat_result, current: os.stat_result | None) -> None:
        claimed = links.carry(self.ctx, self.out, self.src, self.tgt, name, st, current,
                              self._layout(name))
        if claimed is not None:
            self.unsettled.append((SAME, name, st, claimed))

    def large(self, name: str, st: os.stat_result, dst: os.stat_result | None) -> None:
        ranges.split(self.ctx, self.out, self.tgt, name, st, self.barrier, self._layout(name))

    def _layout(self, name: str) -> bytes | None:
        """The source's Lustre layout the decide step read for ``name`` (None: none)."""
        return self.layouts.pop(name, None) if self.layouts else None

    def mkdir(self, name: str, st: os.stat_result, dst: os.stat_result | None) -> None:
        self.tgt.mkdir(name)
        self.out.count(C.CREATED)
        self.out.child(self.out.chunk.op, self.out.path(name), args={"new": True})

    def symlink(self, name: str, st: os.stat_result, dst: os.stat_result | None) -> None:
        points_to = self.src.readlink(name)
        # the kernel updates a link's atime on readlink (no O_NOATIME for links): stamp the
        # atime the source has now, so the copy still matches it
        self.tgt.symlink(name, points_to, self.src.lstat(name), self.src.xattrs(name))
        self.out.count(C.CREATED)

    def node(self, name: str, st: os.stat_result, dst: os.stat_result | None) -> None:
        self.tgt.mknod(name, st, self.src.xattrs(name))
        self.out.count(C.CREATED)

    def type_changed(self, name: str, st: os.stat_result, dst: os.stat_result | None) -> None:
        self.out.count(C.TYPE_CHANGED)  # left alone: see fsclone.ops.plan

    def mend(self, name: str, st: os.stat_result, dst: os.stat_result, want: Xattrs,
             have: Xattrs, attrs: tuple[Attrs, Attrs] | None) -> None:
        """Metadata-only changes, in place: no data is rewritten. ``dst``, the target's lstat,
        is the inode changed (a user may have swapped the name since); ``attrs``, both sides'
        project IDs and flags as compared (None: not compared). A target that refuses the
        change (immutable, append-only) is mended with the source's flags after all, which
        unlocks it first."""
        try:
            if attrs is None:
                self.tgt.mend(name, st, want, have, dst)
            else:
                self.tgt.mend(name, st, want, have, dst, *attrs)
        except PermissionError as exc:
            if attrs is not None or exc.errno != errno.EPERM or not stat.S_ISREG(st.st_mode):
                raise
            self.tgt.mend(name, st, want, have, dst, self.src.attrs(name, st))
        self.out.count(C.UPDATED)


_APPLY: dict[str, Callable[..., None]] = {
    NEW: Applier.new_file, REPLACE: Applier.replace, HARD_LINK: Applier.hard_link,
    LARGE: Applier.large, MKDIR: Applier.mkdir, SYMLINK: Applier.symlink, NODE: Applier.node,
    TYPE_CHANGED: Applier.type_changed,
}
