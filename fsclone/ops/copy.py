"""The copy op (and the copy half of sync): one directory, or one slice of a huge one.

Each entry is compared with its target (the decide step, fsclone.ops.plan) and only what
differs is written (the apply step, fsclone.ops.apply); a dry run shows the plan and never
makes an apply step. New content becomes visible only complete, metadata applied (see
fsclone.fs.target). Subdirectories become child chunks; files of ``large_file_size`` or more
become byte-range chunks (fsclone.ops.ranges), published by a ``finalize`` chunk. The
directory's own metadata is applied when all of its entries are in place: at the end of this
chunk, or by a deferred ``dirmeta`` chunk when slices or large files are still running.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Mapping
from typing import TYPE_CHECKING

from fsclone.chunk import Chunk, Result, new_id
from fsclone.fs import dirs, meta
from fsclone.fs.inodeflags import Attrs
from fsclone.fs.source import SourceChanged
from fsclone.fs.target import TargetDir
from fsclone.ops.apply import Applier
from fsclone.ops.context import Context, Outcome
from fsclone.ops.delete import plan_deletes, planned_here, unplan
from fsclone.ops.dirmeta import apply_dir_meta, created
from fsclone.ops.mountguard import check_mounted
from fsclone.ops.moves import Moves
from fsclone.ops.plan import DESCEND, LARGE, NEW, SAME, Action, Planner, rehearse, show
from fsclone.ops.ranges import DirBarrier
from fsclone.stats import counters as C

if TYPE_CHECKING:
    from fsclone.fs.lustre.create import LustreCreate

#: the fewest entries a dirty directory's chunk hands out in one slice when it spreads: a
#: slice costs the coordinator a chunk
SPREAD_SLICE = 100


def run_copy(ctx: Context, chunk: Chunk) -> Result:
    return _run(ctx, chunk, sync=False)


def run_sync(ctx: Context, chunk: Chunk) -> Result:
    """Copy, and plan the deletions of the same directory from the same source listing."""
    return _run(ctx, chunk, sync=True)


def _run(ctx: Context, chunk: Chunk, sync: bool) -> Result:
    out = Outcome(ctx, chunk)
    try:
        with ctx.open_dirs(chunk.path, out if chunk.args.get("listed") else None) as (sfd, dfd):
            CopyChunk(ctx, out, sfd, dfd).run(sync)
    except OSError as exc:
        out.fail(chunk.path or ".", exc)
    if ctx.layouts is not None:  # this chunk's share of the worker's layout fallbacks
        for kind, n in ctx.layouts.take_fallbacks().items():
            out.count(C.LAYOUT_DEFAULT + kind, n)
    return out.result


class CopyChunk:
    """Copies the entries of one chunk from ``sfd`` into ``dfd`` (None: a dry run whose
    target directory does not exist yet)."""

    def __init__(self, ctx: Context, out: Outcome, sfd: int, dfd: int | None) -> None:
        self.ctx, self.out = ctx, out
        self.src = ctx.source_dir(sfd)
        # the tag makes temp names unique to this run of the chunk
        self.tgt = ctx.target_dir(dfd, new_id()[:12]) if dfd is not None else None
        self.plan = Planner(ctx, out, self.src, self.tgt)
        #: entries whose data is current, their metadata compared by :meth:`_settle`
        self.unsettled: list[Action] = []
        #: slices and large files that must finish before the directory's metadata
        self.barrier = DirBarrier()
        self.applier = (Applier(ctx, out, self.src, self.tgt, self.unsettled, self.barrier,
                                self.plan.layouts)
                        if self.tgt is not None and not ctx.spec.dry_run else None)
        self.unlocked = False  # a read-only target directory was made writable (non-root)
        #: a sync's target files under names planned for deletion, to be renamed to the new
        #: names of the same files (None: not a sync chunk that lists its directory)
        self.moves: Moves | None = None
        #: the entries of each slice this chunk hands out (None: it hands out none)
        self.slice: int | None = None

    # -- the chunk --------------------------------------------------------------------------
    def run(self, sync: bool) -> None:
        chunk, tgt = self.out.chunk, self.tgt
        if chunk.names is None:
            check_mounted(self.ctx, chunk.path, self.src.fd)
            if self.ctx.layouts is not None and self.applier is not None:
                self._dir_layout(self.ctx.layouts, self.applier.tgt)
            listed = self.src.entries()
            if sync and tgt is not None:
                # the complete target listing the plan needs also spares the lookups below
                kinds = self.src.kinds(listed)
                self.plan.existing = set(plan_deletes(
                    self.ctx, self.out, self.src.fd, tgt.fd, kinds, lambda: self._read(listed)))
                # a name of the other kind in the source is not a rename: it is removed, then
                # copied anew (fsclone.ops.delete)
                gone = [n for n in planned_here(self.out) if n not in kinds]
                self.moves = Moves(self.ctx, self.out, self.src, tgt, gone) if gone else None
            entries = self._stat(self._split(listed))
        else:
            entries, unread = self._looked_up(chunk.names)
            if chunk.args.get("listed"):
                entries = self._listed(chunk.names, entries, unread)
        if self.applier is not None:  # before the first change
            self.applier.tgt.inherits = self.applier.tgt.has_default_acl()
        if tgt is not None and self.plan.existing is None and chunk.args.get("new"):
            self.plan.existing = set(tgt.names())
        if not chunk.args.get("moved"):  # else counted by the chunk that listed them
            self.out.count(C.SCANNED, len(entries))
        pace = self.ctx.pace
        for name, st in entries:
            if pace is not None:
                pace.wait(self.out.result.counters)
            try:
                try:
                    self.entry(name, st)
                except PermissionError as exc:
                    self._unlock(exc)
                    self.entry(name, st)
            except SourceChanged:
                self.out.count(C.CHANGED)
                self.out.act("changed", self.out.path(name), "(during copy; next pass takes it)")
            except OSError as exc:
                self.out.fail(self.out.path(name), exc)
        if self.moves is not None:
            unplan(self.out, self.moves.moved)
            self._hand_out_moved()
        if tgt is not None:  # else nothing was found current
            self._settle(tgt)
        self._finish()

    def _dir_layout(self, layouts: LustreCreate, tgt: TargetDir) -> None:
        """The directory's default Lustre layout, before any entry is made in it (so new
        subdirectories inherit it); one that fails is the directory's item error, and its
        entries are copied all the same."""
        where = self.out.chunk.path or "."
        try:
            if layouts.copy_dir_default(self.src.fd, tgt.fd):
                self.out.act("layout", where)
        except OSError as exc:
            self.out.fail(where, exc)

    def _looked_up(self, names: tuple[str, ...],
                   ) -> tuple[list[tuple[str, os.stat_result]], set[str]]:
        """The lstats of a slice's names (or a ``--files-from`` chunk's), those gone left out;
        and the names that could not be read, each its own item error. Where the listing chunk
        planned deletions, it read every name first (:meth:`_read`): a name failing here failed
        since."""
        found: list[tuple[str, os.stat_result]] = []
        unread: set[str] = set()
        for name in names:
            try:
                st = self.src.lookup(name)
            except OSError as exc:
                self.out.fail(self.out.path(name), exc)
                unread.add(name)
                continue
            if st is not None:
                found.append((name, st))
        return found, unread

    def _listed(self, names: tuple[str, ...], found: list[tuple[str, os.stat_result]],
                unread: set[str]) -> list[tuple[str, os.stat_result]]:
        """The entries of a ``--files-from`` chunk that are there to copy: a listed one missing
        from the source is an item error, and so is one that became a directory since the list
        was read (it is not walked). ``unread``: those whose errors are listed already."""
        there = {name for name, _ in found} | unread
        for name in names:
            if name not in there:
                self.out.fail(self.out.path(name), FileNotFoundError(
                    errno.ENOENT, "listed in --files-from, not in the source"))
        for name, _ in [(n, st) for n, st in found if stat.S_ISDIR(st.st_mode)]:
            self.out.fail(self.out.path(name), IsADirectoryError(
                errno.EISDIR, "a directory now, not when --files-from was read: not walked"))
        return [(n, st) for n, st in found if not stat.S_ISDIR(st.st_mode)]

    def _unlock(self, refused: PermissionError) -> None:
        """A change refused in the target directory (a non-root pass's own read-only one, an
        immutable or append-only one) opens it up, once, for the entry to be tried again
        (the directory's metadata restores mode and flags); ``refused`` is raised when that
        cannot help."""
        if self.unlocked or self.applier is None or not self.applier.tgt.open_up():
            raise refused
        self.unlocked = True

    def entry(self, name: str, st: os.stat_result) -> None:
        """Decide, then apply the action (or, in a dry run, rehearse it), shown first when
        shown at all; the metadata of current entries is settled later."""
        action = self.plan.decide(name, st)
        if action is None:
            return
        kind = action[0]
        if kind == SAME:
            self.unsettled.append(action)
            return
        if kind in (NEW, LARGE) and self.moves is not None and action[3] is None:
            moved = self.moves.take(name, st)
            if moved is not None:
                if self.applier is not None:  # its metadata is compared with the rest
                    self.unsettled.append((SAME, name, st, moved))
                return
        if kind == DESCEND:
            if self.out.chunk.args.get("shallow"):
                self._subdir_meta(name, st, action[3])
            else:
                self.out.child(self.out.chunk.op, self.out.path(name), args={})
            return
        if self.out.shows:
            show(self.out, action)
        if self.applier is None:
            rehearse(self.out, action)
        else:
            self.applier.apply(action)

    def _subdir_meta(self, name: str, st: os.stat_result, dst: os.stat_result | None) -> None:
        """A shallow chunk (a dirty directory of change-driven sync) does not walk into a
        subdirectory both sides have, but mends its own metadata where the source's inode
        changed since the target's did (its ctime) or differs."""
        assert dst is not None  # a directory the target has
        if st.st_ctime_ns < dst.st_ctime_ns and meta.inode_same(st, dst, self.ctx.times):
            self.out.count(C.SAME)
            return
        with dirs.opened(dirs.open_dir(name, self.src.fd)) as sub_src:
            assert self.tgt is not None
            with dirs.opened(dirs.open_dir(name, self.tgt.fd)) as sub_dst:
                apply_dir_meta(self.ctx, self.out, self.out.path(name), sub_src, sub_dst)

    def _settle(self, tgt: TargetDir) -> None:
        """Compare (and mend) the metadata of the entries whose data is current: all source
        xattrs of the chunk are read in one go, then all target ones (see fs.meta)."""
        if not self.unsettled:
            return
        times = self.ctx.times
        same = 0
        # an entry whose source inode did not change since its copy was made (meta.untouched)
        # has the xattrs it was given: only its lstat is compared, and no xattr is read (two
        # round trips a file on a network filesystem); ``--checksum`` compares them all
        compared = self.unsettled
        if not self.ctx.spec.checksum:
            compared = []
            for action in self.unsettled:
                _, name, st, dst = action
                assert dst is not None  # the data of an entry there is current
                if meta.untouched(st, dst) and not self._just_moved(name) \
                        and meta.inode_same(st, dst, times):
                    same += 1
                else:
                    compared.append(action)
        names = [name for _, name, _, _ in compared]
        wanted = self.src.xattrs_of(names)
        present = tgt.xattrs_of(names)
        # project IDs and flags are compared only where the source inode changed since its
        # copy did (setting either moves the ctime): the no-change path costs a comparison
        carried = self.src.flags.any
        known = self.plan.known
        for (_, name, st, dst), sx, dx in zip(compared, wanted, present, strict=True):
            assert dst is not None  # the data of an entry there is current
            if (sx == dx and (not carried or self._copied_since(name, st, dst)) and not known
                    and meta.inode_same(st, dst, times)):
                same += 1
                continue
            try:
                attrs = self._attrs(name, st, dst, tgt) if carried else None
                flagged = attrs is not None and bool(attrs[0].differences(attrs[1]))
                if sx == dx and not flagged and meta.inode_same(st, dst, times):
                    same += 1
                    continue
                if isinstance(sx, OSError):
                    raise sx
                if isinstance(dx, OSError):
                    raise dx
                diff = meta.with_xattrs(meta.inode_diff(st, dst, times), sx, dx)
                self.out.act("attrs", self.out.path(name),
                             ",".join(diff.names() + (["flags"] if flagged else [])))
                if self.applier is None:
                    self.out.count(C.UPDATED)
                else:
                    self.applier.mend(name, st, dst, sx, dx, attrs)
            except OSError as exc:
                self.out.fail(self.out.path(name), exc)
        if same:
            self.out.count(C.SAME, same)

    def _attrs(self, name: str, st: os.stat_result, dst: os.stat_result, tgt: TargetDir,
               ) -> tuple[Attrs, Attrs] | None:
        """Both sides' project IDs and flags of a regular file, when they may differ: read
        with the data by ``--checksum``, or read now where the source's inode changed (its
        ctime) since the copy's did. None: not compared."""
        known = self.plan.known.pop(name, None) if self.plan.known else None
        if known is not None:
            return known
        if self._copied_since(name, st, dst) or not stat.S_ISREG(st.st_mode):
            return None
        return self.src.attrs(name, st), tgt.attrs(name, dst)

    def _copied_since(self, name: str, st: os.stat_result, dst: os.stat_result) -> bool:
        """Whether the copy ``dst`` changed after the source inode ``st`` last did (their
        ctimes), and was not just moved to ``name``: its project ID and flags are then the
        source's."""
        return st.st_ctime_ns < dst.st_ctime_ns and not self._just_moved(name)

    def _just_moved(self, name: str) -> bool:
        """Whether this chunk's file ``name`` was just moved there (fsclone.ops.moves), as
        all of a ``moved`` slice's were, by the spreading chunk that handed it out."""
        if self.moves is not None:
            return name in self.moves.names
        return bool(self.out.chunk.args.get("moved"))

    def _hand_out_moved(self) -> None:
        """A chunk that hands out slices (a huge directory, or a dirty one that spreads:
        fsclone.engine.changes) moved the files of its new names itself; their metadata, a
        dozen requests a file, is compared by ``moved`` slices, in parallel."""
        if self.slice is None or self.applier is None:
            return
        assert self.moves is not None
        moved = self.moves.names
        names = [name for _, name, _, _ in self.unsettled if name in moved]
        self.unsettled[:] = [a for a in self.unsettled if a[1] not in moved]
        self._hand_out(names, self.slice, {**self.out.chunk.args, "moved": True})

    def _split(self, listed: list[os.DirEntry[str]]) -> list[os.DirEntry[str]]:
        """Keep the first slice of a huge directory (or a dirty directory's share of its
        ``spread``: fsclone.engine.changes); the rest go out as slice chunks, by name, not
        stat-ed here (each slice stats its own: on a network filesystem, a round trip an entry
        taken off the path every slice waits on). Names the target lacks come first where
        some are planned for deletion: only this chunk pairs them with the old names of
        renamed files (fsclone.ops.moves), so it keeps them, up to a slice."""
        chunk = self.out.chunk
        most = self.ctx.spec.dir_slice
        size = min(most, max(SPREAD_SLICE, -(-len(listed) // chunk.args.get("spread", 1))))
        if len(listed) <= size:
            return listed
        self.slice = size
        keep, existing = size, self.plan.existing
        if self.moves is not None and existing is not None:
            new = [e for e in listed if e.name not in existing]
            listed = new + [e for e in listed if e.name in existing]
            keep = min(most, max(size, len(new)))
        self._hand_out([e.name for e in listed[keep:]], size, chunk.args)
        return listed[:keep]

    def _read(self, listed: list[os.DirEntry[str]]) -> None:
        """Stat every listed entry (each keeps its lstat for later), before anything of this
        directory is planned for deletion: an entry that cannot be read (a renamed file's new
        name, whose only copy in the target is under a planned name) fails the directory, and
        nothing is planned."""
        _, failed = self.src.stat_listed(listed)
        if failed:
            raise failed[0][1]

    def _stat(self, listed: list[os.DirEntry[str]]) -> list[tuple[str, os.stat_result]]:
        """The lstats of the listed entries this chunk works on. One gone since the listing is
        left out; one that cannot be read is its own item error, which can only be where
        nothing is planned for deletion (else :meth:`_read` failed the directory first)."""
        found, failed = self.src.stat_listed(listed)
        for name, exc in failed:
            self.out.fail(self.out.path(name), exc)
        return found

    def _hand_out(self, names: list[str], size: int, args: Mapping[str, object]) -> None:
        """Slices of ``size`` of these names, as chunks of this directory behind its barrier."""
        chunk = self.out.chunk
        for start in range(0, len(names), size):
            self.out.child(chunk.op, chunk.path, names=tuple(names[start:start + size]),
                           group=self.barrier.id, args=dict(args))
            self.barrier.members += 1

    def _finish(self) -> None:
        """Hand out the range chunks, then apply the directory's metadata now, or defer it
        behind the barrier."""
        self.barrier.hand_out(self.out)
        chunk = self.out.chunk
        if chunk.names is None:
            if self.barrier.members:
                self.barrier.close(self.out, Chunk(op="dirmeta", path=chunk.path,
                                                   args=_dirmeta_args(chunk)))
            elif self.tgt is not None:
                apply_dir_meta(self.ctx, self.out, chunk.path, self.src.fd, self.tgt.fd,
                               created(chunk))
        elif self.barrier.members:
            # a slice with large files hands its place in the directory's barrier to this one
            self.barrier.close(self.out, Chunk(op="barrier", path=chunk.path, group=chunk.group))


def _dirmeta_args(chunk: Chunk) -> dict[str, bool]:
    """What the deferred ``dirmeta`` of a split directory keeps of its chunk's args: whether
    the pass made the directory."""
    return {"new": True} if chunk.args.get("new") else {}
