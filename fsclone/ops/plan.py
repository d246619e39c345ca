"""The copy's decide step: what to do with one entry, from the source's lstat, the target's and
the filters. Deciding may read (a target lookup, a checksum or readlink compare), never write:
what it returns is carried out by fsclone.ops.apply, or, in a dry run, only shown.

An action is a plain tuple, ``(kind, name, st, dst)``: the kind (below), the entry's name, the
source's lstat and the target's (None when the target lacks the name). Every file of every pass
gets one, so it is kept as cheap as a tuple can be.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Final, Literal

from fsclone.errors import LayoutError
from fsclone.fs.inodeflags import Attrs
from fsclone.fs.source import SourceDir
from fsclone.fs.steps import SOURCE
from fsclone.fs.target import TargetDir
from fsclone.ops.context import Context, Outcome
from fsclone.ops.mountguard import other_filesystem
from fsclone.stats import counters as C

#: data current: the metadata is compared a chunk at a time (the settle pass), and mended
SAME: Final = "same"
#: a regular file the target lacks: written unnamed, then linked in
NEW: Final = "new"
#: a regular file whose target differs, or is of another non-directory type: renamed over
REPLACE: Final = "replace"
#: a file of several links: through the staging directory (fsclone.ops.links); ``dst`` is the
#: target when its data is current, else None
HARD_LINK: Final = "hard link"
#: a file of ``large_file_size`` or more: copied in byte ranges (fsclone.ops.ranges)
LARGE: Final = "large"
#: a directory the target lacks: made, and walked by a child chunk
MKDIR: Final = "mkdir"
#: a directory the target has: walked by a child chunk
DESCEND: Final = "descend"
SYMLINK: Final = "symlink"
#: a fifo, socket or device node
NODE: Final = "node"
#: a directory now a non-directory, or the reverse: left for sync or delete (a copy)
TYPE_CHANGED: Final = "type changed"

Action = tuple[str, str, os.stat_result, os.stat_result | None]

#: what an action is shown as (verb, detail), in a dry run and with ``-v``
SHOWN: Final = {NEW: ("copy", ""), REPLACE: ("copy", ""), LARGE: ("copy", "(in ranges)"),
                MKDIR: ("mkdir", ""), SYMLINK: ("symlink", ""), NODE: ("mknod", ""),
                TYPE_CHANGED: ("type changed", "(left for sync or delete)")}


def show(out: Outcome, action: Action) -> None:
    """The action's line (kept when someone will read it)."""
    shown = SHOWN.get(action[0])
    if shown is not None:
        out.act(shown[0], out.path(action[1]), shown[1])


def rehearse(out: Outcome, action: Action) -> None:
    """A dry run's stand-in for carrying an action out: the counters the pass would have,
    and the child chunk of a directory it would make."""
    kind, name, st, _ = action
    if kind in (NEW, REPLACE):
        out.count(C.COPIED)
        out.count(C.BYTES, st.st_size)
    elif kind == MKDIR:
        out.count(C.CREATED)
        out.child(out.chunk.op, out.path(name), args={"new": True})
    elif kind == TYPE_CHANGED:
        out.count(C.TYPE_CHANGED)
    else:  # symlinks and nodes; a dry run plans no hard links and no ranges
        out.count(C.CREATED)


class Planner:
    """Decides, entry by entry, for one chunk (``tgt`` None: a dry run whose target directory
    does not exist yet)."""

    __slots__ = ("ctx", "dry", "existing", "known", "layouts", "out", "src", "sync", "tgt")

    def __init__(self, ctx: Context, out: Outcome, src: SourceDir, tgt: TargetDir | None,
                 ) -> None:
        self.ctx, self.out, self.src, self.tgt = ctx, out, src, tgt
        #: the target directory's names, when the chunk lists it anyway (sync) or this pass
        #: made it (most names absent): a listing costs less than a failed lookup per name
        #: (None: look each name up)
        self.existing: set[str] | None = None
        self.dry = ctx.spec.dry_run
        self.sync = out.chunk.op == "sync"
        #: name → both sides' project IDs and flags, read with the data by ``--checksum``
        #: (compared with the rest of the metadata, in the settle pass)
        self.known: dict[str, tuple[Attrs, Attrs]] = {}
        #: name → the Lustre layout of a file to copy, read here for the apply step to create
        #: it with (see :meth:`_lustre`)
        self.layouts: dict[str, bytes] = {}

    def decide(self, name: str, st: os.stat_result) -> Action | None:
        """The action for one entry, None for none (skipped ones are counted here). On the
        path every file of every pass takes: kept lean on purpose (the path below a directory
        is joined only when something needs it)."""
        ctx, out = self.ctx, self.out
        filters = ctx.filters
        if filters.globs and filters.excluded(out.path(name), stat.S_ISDIR(st.st_mode)):
            out.count(C.SKIP_EXCLUDED)
            return None
        if not ctx.times.holds(st):
            out.count(C.TIMES_CLAMPED)
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            return self._directory(name, st)
        if filters.ages:
            skipped = filters.age_skip(st)
            if skipped:
                out.count(skipped)
                return None
        dst = self.target(name)
        if dst is not None and stat.S_ISDIR(dst.st_mode):
            return self._type_changed(name, st, dst)
        if stat.S_ISREG(mode):
            if ctx.reads_layouts:
                decided = self._lustre(name, st, dst)
                if decided is not False:
                    return decided
            return self._regular(name, st, dst)
        if stat.S_ISLNK(mode):
            return self._symlink(name, st, dst)
        if (dst is not None and stat.S_IFMT(dst.st_mode) == stat.S_IFMT(mode)
                and dst.st_rdev == st.st_rdev):
            return SAME, name, st, dst
        return NODE, name, st, dst

    def target(self, name: str) -> os.stat_result | None:
        """The target entry's lstat, None when there is none."""
        if self.tgt is None or (self.existing is not None and name not in self.existing):
            return None
        return self.tgt.lookup(name)

    def _type_changed(self, name: str, st: os.stat_result, dst: os.stat_result,
                      ) -> Action | None:
        """A directory now a non-directory, or the reverse. Replacing it deletes the old entry
        (a whole subtree, perhaps), so the copy step never does: a sync planned it as a
        deletion, under ``--max-delete``, and copies the name once it is gone; a copy lists it
        and leaves it."""
        return None if self.sync else (TYPE_CHANGED, name, st, dst)

    def _directory(self, name: str, st: os.stat_result) -> Action | None:
        if self.ctx.is_target_root(st):
            self.out.fail(self.out.path(name), OSError(
                errno.ELOOP, "is the target's root (a bind mount into the source?): not entered"))
            return None
        if other_filesystem(self.ctx, self.out, name, st):
            return None
        dst = self.target(name)
        if dst is None:
            return MKDIR, name, st, None
        if not stat.S_ISDIR(dst.st_mode):
            return self._type_changed(name, st, dst)
        return DESCEND, name, st, dst

    def _regular(self, name: str, st: os.stat_result, dst: os.stat_result | None) -> Action:
        current = dst is not None and stat.S_ISREG(dst.st_mode) and self._same_data(name, st, dst)
        if st.st_nlink > 1 and not self.dry:
            return HARD_LINK, name, st, dst if current else None
        # a target still linked to other names is rewritten (links split in the source); a dry
        # run cannot tell a link group it would keep, so it trusts the data check alone
        if current and dst is not None and (dst.st_nlink == 1 or self.dry):
            return SAME, name, st, dst
        if st.st_size >= self.ctx.spec.large_file_size and not self.dry:
            return LARGE, name, st, dst
        return (NEW if dst is None else REPLACE), name, st, dst

    def _lustre(self, name: str, st: os.stat_result, dst: os.stat_result | None,
                ) -> Action | Literal[False] | None:
        """A regular file of a Lustre source, before its data is compared or read: its layout
        is read (by name: an open may recall a released file) where it will be copied, for
        the apply step; an HSM-released one (``--released skip``) is left unread, counted
        and listed, and its target copy, if any, untouched. A released file whose copy is
        current by size and mtime is compared no further (even under ``--checksum``: its
        data is on tape) and settles as unchanged. Returns False to decide on as for any
        file, else the decision (None: left)."""
        current = (dst is not None and stat.S_ISREG(dst.st_mode) and st.st_size == dst.st_size
                   and self.ctx.times.same(st.st_mtime_ns, dst.st_mtime_ns))
        if (current and not self.ctx.spec.checksum and dst is not None
                and (dst.st_nlink == 1 or st.st_nlink > 1)):
            return False  # the common case of a later pass, which reads nothing (a copy still
            # linked to other names is rewritten: see _regular)
        from fsclone.fs.lustre.read import file_layout  # a Lustre source's only

        layout = file_layout(self.src.fd, name, SOURCE)
        if layout is None:
            return False
        if self.ctx.skip_released and _released(layout):
            if current:
                assert dst is not None  # current: the target's copy is there
                return SAME, name, st, dst
            self.out.count(C.RELEASED)
            self.out.result.released.append(self.out.path(name))
            return None
        if self.ctx.layouts is not None:
            self.layouts[name] = layout
        return False

    def _same_data(self, name: str, st: os.stat_result, dst: os.stat_result) -> bool:
        if st.st_size != dst.st_size:
            return False
        if not self.ctx.spec.checksum:
            return self.ctx.times.same(st.st_mtime_ns, dst.st_mtime_ns)
        assert self.tgt is not None  # a target entry was found
        same, attrs = self.src.same_bytes(name, self.tgt.fd, st.st_size, self.tgt.flags)
        if attrs is not None:
            self.known[name] = attrs
        return same

    def _symlink(self, name: str, st: os.stat_result, dst: os.stat_result | None) -> Action:
        """A symlink cannot change in place: a target link of the same length and mtime is
        current unless the source link was made (or touched) after it, as its ctime tells;
        only then are both links read and compared. Readlink moves a link's atime (no
        O_NOATIME for links), so what the copy is then compared with is taken after it."""
        if (dst is not None and stat.S_ISLNK(dst.st_mode) and dst.st_size == st.st_size
                and self.ctx.times.same(st.st_mtime_ns, dst.st_mtime_ns)):
            if st.st_ctime_ns < dst.st_ctime_ns:
                return SAME, name, st, dst
            assert self.tgt is not None  # a target entry was found
            if self.src.readlink(name) == self.tgt.readlink(name):
                src_now, dst_now = self.src.lookup(name), self.tgt.lookup(name)
                if src_now is None or dst_now is None:
                    raise FileNotFoundError(errno.ENOENT, "vanished while compared", name)
                return SAME, name, src_now, dst_now
        return SYMLINK, name, st, dst


def _released(layout: bytes) -> bool:
    """Whether a layout says HSM released the file; one that cannot be decoded is taken as
    not (its copy then gets the target's default layout, counted as "unreadable")."""
    from fsclone.fs.lustre.layout import is_released  # a Lustre source's only

    try:
        return is_released(layout)
    except LayoutError:
        return False
