"""The copy op (and the copy half of sync): one directory, or one slice of a huge one.

Each entry is compared with its target and only what differs is written. New content goes to a
temp name in the target directory and is renamed over the old entry once complete, metadata
applied. Subdirectories become child chunks; files of ``large_file_size`` or more become byte-
range chunks copied by several workers into one temp file, finalized by a ``finalize`` chunk.
The directory's own metadata is applied when all of its entries are in place: at the end of
this chunk, or by a deferred ``dirmeta`` chunk when slices or large files are still running.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import itertools
import os
import stat

from fsclone.chunk import Chunk, Group, Result, new_id
from fsclone.fs import data, dirs, meta, steps
from fsclone.ops.context import (
    Context,
    Outcome,
    file_of,
    file_path,
    on_both_dirs,
)
from fsclone.ops.delete import plan_deletes
from fsclone.ops.dirmeta import apply_dir_meta, created
from fsclone.ops.mountguard import check_mounted, other_filesystem
from fsclone.schema import is_temp_for, temp_name
from fsclone.stats import counters as C

_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class SourceChanged(Exception):
    """The source file changed while it was copied: its copy must not be stamped as done."""


def changed(before: os.stat_result, after: os.stat_result) -> bool:
    return (before.st_ino, before.st_size, before.st_mtime_ns, before.st_ctime_ns) != (
        after.st_ino, after.st_size, after.st_mtime_ns, after.st_ctime_ns)


def replace_entry(dfd: int, tmp: str, name: str) -> None:
    """Rename a finished temp over ``name``, which replaces anything but a directory. A
    directory is never removed here (it is a deletion, planned and guarded): one that appeared
    since the listing makes the rename fail, an item error, and the temp is discarded."""
    try:
        os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
    except BaseException:
        discard(dfd, tmp)
        raise


def discard(dfd: int, tmp: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp, dir_fd=dfd)


def run_copy(ctx: Context, chunk: Chunk) -> Result:
    return _run(ctx, chunk, sync=False)


def run_sync(ctx: Context, chunk: Chunk) -> Result:
    """Copy, and plan the deletions of the same directory from the same source listing."""
    return _run(ctx, chunk, sync=True)


def _run(ctx: Context, chunk: Chunk, sync: bool) -> Result:
    out = Outcome(ctx, chunk)
    try:
        with ctx.open_dirs(chunk.path) as (sfd, dfd):
            DirCopier(ctx, out, sfd, dfd).run(sync)
    except OSError as exc:
        out.fail(chunk.path or ".", exc)
    return out.result


class DirCopier:
    """Copies the entries of one chunk from ``sfd`` into ``dfd``."""

    def __init__(self, ctx: Context, out: Outcome, sfd: int, dfd: int | None) -> None:
        self.ctx, self.out, self.sfd, self.dfd = ctx, out, sfd, dfd
        self.spec = ctx.spec
        self.dry = ctx.spec.dry_run
        self.tag = new_id()[:12]  # unique to this run of the chunk
        self.waiting = 0  # slices and large files that must finish before the directory's meta
        self.inherits = False  # the target directory has a default ACL new files inherit
        self.unlocked = False  # a read-only target directory was made writable (non-root)
        #: the target directory's names, when the chunk lists it anyway (sync) or this pass made
        #: it (most names absent): a listing costs less than a failed lookup per name (None:
        #: look each name up)
        self.existing: set[str] | None = None
        #: entries whose data is current, their metadata compared by :meth:`_settle`
        self.unsettled: list[tuple[str, os.stat_result, os.stat_result]] = []
        #: each large file's range chunks, handed out interleaved by :meth:`_finish`
        self.ranges: list[list[Chunk]] = []

    @functools.cached_property
    def barrier(self) -> str:
        """The barrier this chunk's slices and finalize chunks count toward; made on first
        use, since most chunks have neither."""
        return new_id()

    # -- the chunk --------------------------------------------------------------------------
    def run(self, sync: bool) -> None:
        chunk = self.out.chunk
        if chunk.names is None:
            check_mounted(self.ctx, chunk.path, self.sfd)
            entries = dirs.list_dir(self.sfd)
            if sync and self.dfd is not None:
                # the complete target listing the plan needs also spares the lookups below
                kinds = {n: stat.S_ISDIR(st.st_mode) for n, st in entries}
                self.existing = set(plan_deletes(self.ctx, self.out, self.sfd, self.dfd, kinds))
            entries = self._split(entries)
        else:
            entries = [(n, st) for n in chunk.names if (st := dirs.lstat_at(n, self.sfd))]
        if self.dfd is not None and not self.dry:
            self._prepare_target({n for n, _ in entries} if chunk.names else None)
        if self.dfd is not None and self.existing is None and chunk.args.get("new"):
            self.existing = set(dirs.list_names(self.dfd))
        self.out.count(C.SCANNED, len(entries))
        for name, st in entries:
            try:
                self._entry_in_own_dir(name, st)
            except SourceChanged:
                self.out.count(C.CHANGED)
                self.out.act("changed", self.out.path(name), "(during copy; next pass takes it)")
            except OSError as exc:
                self.out.fail(self.out.path(name), exc)
        self._settle()
        self._finish()

    def _entry_in_own_dir(self, name: str, st: os.stat_result) -> None:
        """One entry; a non-root pass refused a change in its own read-only target directory
        makes it writable and tries again (the directory's metadata restores the mode)."""
        try:
            self.entry(name, st)
        except PermissionError:
            if self.unlocked or self.dfd is None or self.dry or not dirs.make_writable(self.dfd):
                raise
            self.unlocked = True
            self.entry(name, st)

    def _settle(self) -> None:
        """Compare (and mend) the metadata of the entries whose data is current. xattr calls
        take no dir_fd (see fs.threadcwd), so all source xattrs are read from inside the source
        directory, then all target ones: two chdirs per chunk, not two per file."""
        if not self.unsettled:
            return
        assert self.dfd is not None
        names = [name for name, _, _ in self.unsettled]
        wanted = meta.read_xattrs_of(names, self.sfd, side=steps.SOURCE)
        present = meta.read_xattrs_of(names, self.dfd, side=steps.TARGET)
        times = self.ctx.times
        same = 0
        for (name, st, dst), sx, dx in zip(self.unsettled, wanted, present, strict=True):
            if sx == dx and meta.inode_same(st, dst, times):
                same += 1
                continue
            try:
                if isinstance(sx, OSError):
                    raise sx
                if isinstance(dx, OSError):
                    raise dx
                self.mend_meta(name, st, dst, sx, dx)
            except OSError as exc:
                self.out.fail(self.out.path(name), exc)
        if same:
            self.out.count(C.SAME, same)

    def _prepare_target(self, names: set[str] | None) -> None:
        assert self.dfd is not None
        if self.out.chunk.redo:
            for leftover in dirs.list_names(self.dfd):
                if is_temp_for(leftover, self.spec.id, names):
                    discard(self.dfd, leftover)
        try:
            self.inherits = bool(os.getxattr(self.dfd, "system.posix_acl_default"))
        except OSError:
            self.inherits = False

    def _split(self, entries: list[tuple[str, os.stat_result]]) -> list[tuple[str, os.stat_result]]:
        """Keep the first slice of a huge directory; the rest go out as slice chunks."""
        size = self.spec.dir_slice
        if len(entries) <= size:
            return entries
        path = self.out.chunk.path
        for start in range(size, len(entries), size):
            names = tuple(n for n, _ in entries[start:start + size])
            self.out.child(self.out.chunk.op, path, names=names, group=self.barrier,
                           args=self.out.chunk.args)
            self.waiting += 1
        return entries[:size]

    def _finish(self) -> None:
        """Hand out the range chunks, one of each large file in turn: on most filesystems two
        writers of one file queue on its inode lock, so workers busy with different files go
        faster. Then apply the directory's metadata now, or defer it behind a barrier."""
        for turn in itertools.zip_longest(*self.ranges):
            self.out.result.children.extend(c for c in turn if c is not None)
        chunk = self.out.chunk
        if chunk.names is None:
            if self.waiting:
                then = Chunk(op="dirmeta", path=chunk.path, args=chunk.args)
                self.out.result.groups.append(Group(self.barrier, self.waiting, then))
            elif self.dfd is not None:
                apply_dir_meta(self.ctx, self.out, chunk.path, self.sfd, self.dfd,
                               created(chunk))
        elif self.waiting:
            # a slice with large files hands its place in the directory's barrier to this one
            then = Chunk(op="barrier", path=chunk.path, group=chunk.group)
            self.out.result.groups.append(Group(self.barrier, self.waiting, then))

    # -- one entry --------------------------------------------------------------------------
    def entry(self, name: str, st: os.stat_result) -> None:
        """One entry, on the path every file of every pass takes: kept lean on purpose (the
        path below a directory is joined only when something needs it)."""
        filters = self.ctx.filters
        if filters.globs and filters.excluded(self.out.path(name), name):
            self.out.count(C.SKIP_EXCLUDED)
            return
        if not self.ctx.times.holds(st):
            self.out.count(C.TIMES_CLAMPED)
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            if self.ctx.is_target_root(st):
                self.out.fail(self.out.path(name), OSError(
                    errno.ELOOP, "is the target's root (a bind mount into the source?): "
                    "not entered"))
                return
            if not other_filesystem(self.ctx, self.out, name, st):
                self.directory(name, self.out.path(name))
            return
        if filters.ages:
            skipped = filters.age_skip(st)
            if skipped:
                self.out.count(skipped)
                return
        dst = self.target(name)
        if dst is not None and stat.S_ISDIR(dst.st_mode):
            self.type_changed(name)
        elif stat.S_ISREG(mode):
            self.regular(name, st, dst)
        elif stat.S_ISLNK(mode):
            self.symlink(name, st, dst)
        else:
            self.special(name, st, dst)

    def target(self, name: str) -> os.stat_result | None:
        """The target entry's lstat, None when there is none."""
        if self.dfd is None or (self.existing is not None and name not in self.existing):
            return None
        return dirs.lstat_at(name, self.dfd)

    def type_changed(self, name: str) -> None:
        """A directory now a non-directory, or the reverse. Replacing it deletes the old entry
        (a whole subtree, perhaps), so the copy step never does: a sync planned it as a
        deletion, under ``--max-delete``, and copies the name once it is gone; a copy lists it
        and leaves it."""
        if self.out.chunk.op == "sync":
            return
        self.out.count(C.TYPE_CHANGED)
        self.out.act("type changed", self.out.path(name), "(left for sync or delete)")

    def directory(self, name: str, rel: str) -> None:
        dst = self.target(name)
        if dst is not None and not stat.S_ISDIR(dst.st_mode):
            self.type_changed(name)
            return
        if dst is None:
            self.out.act("mkdir", rel)
            if not self.dry:
                assert self.dfd is not None
                os.mkdir(name, 0o700, dir_fd=self.dfd)
            self.out.count(C.CREATED)
        self.out.child(self.out.chunk.op, rel, args={"new": True} if dst is None else {})

    def regular(self, name: str, st: os.stat_result, dst: os.stat_result | None) -> None:
        current = dst is not None and stat.S_ISREG(dst.st_mode) and self._same_data(name, st, dst)
        if st.st_nlink > 1 and not self.dry:
            self.hard_linked(name, st, dst if current else None)
            return
        # a target still linked to other names is rewritten (links split in the source); a dry
        # run cannot tell a link group it would keep, so it trusts the data check alone
        if current and dst is not None and (dst.st_nlink == 1 or self.dry):
            self.unsettled.append((name, st, dst))
            return
        if st.st_size >= self.spec.large_file_size and not self.dry:
            self.large(name, st)
            return
        self.out.act("copy", self.out.path(name))
        if self.dry:
            self.out.count(C.COPIED)
            self.out.count(C.BYTES, st.st_size)
            return
        written = self.copy_unnamed(name, st) if dst is None else None
        if written is None:
            tmp, written = self.copy_to_temp(name, st)
            assert self.dfd is not None
            replace_entry(self.dfd, tmp, name)
        self.out.count(C.COPIED)
        self.out.count(C.BYTES, written)

    def _same_data(self, name: str, st: os.stat_result, dst: os.stat_result) -> bool:
        if st.st_size != dst.st_size:
            return False
        if not self.spec.checksum:
            return self.ctx.times.same(st.st_mtime_ns, dst.st_mtime_ns)
        assert self.dfd is not None
        with dirs.FilePair(name, self.sfd, self.dfd) as (src, dst_fd):
            size = st.st_size
            return data.hash_range(src, 0, size)[0] == data.hash_range(dst_fd, 0, size)[0]

    def mend_meta(self, name: str, st: os.stat_result, dst: os.stat_result,
                  sx: dict[str, bytes], dx: dict[str, bytes]) -> None:
        """Metadata-only changes are applied in place: no data is rewritten. ``sx`` and ``dx``
        are the source's and the target's xattrs; ``dst``, the target's lstat, is the inode
        changed (a user may have swapped the name since)."""
        assert self.dfd is not None
        diff = meta.with_xattrs(meta.inode_diff(st, dst, self.ctx.times), sx, dx)
        self.out.act("attrs", self.out.path(name), ",".join(diff.names()))
        if not self.dry:
            meta.apply_at(name, self.dfd, st, sx, dx, compared=dst)
        self.out.count(C.UPDATED)

    def copy_unnamed(self, name: str, st: os.stat_result) -> int | None:
        """Copy a file whose name the target lacks into an unnamed file, then link it in: the
        cheapest way to a complete new file. Returns the bytes written, or None where the
        target filesystem has no unnamed files (the caller then uses :meth:`copy_to_temp`)."""
        assert self.dfd is not None
        unnamed = self.ctx.unnamed
        dst = unnamed.open(self.dfd, meta.creation_mode(st))
        if dst is None:
            return None
        try:
            written = self._fill(name, st, dst, fresh=True)
            try:
                unnamed.link(dst, self.dfd, name)
            except FileExistsError:  # the name appeared since the listing: replace it
                tmp = temp_name(self.spec.id, name, self.tag)
                unnamed.link(dst, self.dfd, tmp)
                replace_entry(self.dfd, tmp, name)
        finally:
            os.close(dst)
        return written

    def copy_to_temp(self, name: str, st: os.stat_result) -> tuple[str, int]:
        """Copy data and metadata into a new temp file; returns its name and the bytes written
        (counted by the caller once the copy is kept). The temp is removed on any failure."""
        assert self.dfd is not None
        tmp = temp_name(self.spec.id, name, self.tag)
        dst = os.open(tmp, _NEW_FILE, 0o600, dir_fd=self.dfd)
        try:
            written = self._fill(name, st, dst)
        except BaseException:
            os.close(dst)
            discard(self.dfd, tmp)
            raise
        os.close(dst)
        return tmp, written

    def _fill(self, name: str, st: os.stat_result, dst: int, fresh: bool = False) -> int:
        """Copy the source file's data and metadata into ``dst`` (``fresh``: just made with
        ``meta.creation_mode(st)``); returns the bytes written. Raises SourceChanged when the
        source was replaced or written since ``st`` was taken: one fstat after the copy proves
        the fd is the listed file, unchanged, so none is needed before it."""
        src = dirs.open_file(name, self.sfd)
        try:
            written = data.copy_whole(src, dst, st.st_size, data.is_sparse(st),
                                      (st.st_dev, self.ctx.dst_dev))
            if changed(st, os.fstat(src)):
                raise SourceChanged()
            # a new file got its owner and mode from the directory (setgid, grpid, umask): one
            # fstat tells which of chown and chmod are still needed; under a default ACL the
            # inherited ACL is replaced in full
            have = meta.read_xattrs(dst, side=steps.TARGET) if self.inherits else {}
            current = os.fstat(dst) if fresh and not self.inherits else None
            meta.apply_all(dst, st, meta.read_xattrs(src, side=steps.SOURCE), have, current=current)
        finally:
            os.close(src)
        return written

    def hard_linked(self, name: str, st: os.stat_result,
                    current: os.stat_result | None) -> None:
        """Keep hard links without a global map: the first worker to meet a source inode puts a
        link to its target copy in the staging directory under the source (dev, ino); every
        other name of that inode is linked from there."""
        assert self.dfd is not None
        stg = self.ctx.staging_fd()
        key = f"{st.st_dev:x}-{st.st_ino:x}"
        if current is not None:
            if self._claim(name, key, current, stg):
                self.unsettled.append((name, st, current))
                return
            canon = dirs.lstat_at(key, stg)
            if canon is not None and canon.st_ino == current.st_ino:
                self.out.count(C.SAME)
                return
        else:
            canon = dirs.lstat_at(key, stg)
        if canon is None:
            self.out.act("copy", self.out.path(name))
            tmp, written = self.copy_to_temp(name, st)
            try:
                os.link(tmp, key, src_dir_fd=self.dfd, dst_dir_fd=stg, follow_symlinks=False)
            except FileExistsError:
                discard(self.dfd, tmp)  # another worker published this inode first
            except BaseException:
                discard(self.dfd, tmp)
                raise
            else:
                replace_entry(self.dfd, tmp, name)
                self.out.count(C.COPIED)
                self.out.count(C.BYTES, written)
                return
        self.out.act("link", self.out.path(name))
        tmp = temp_name(self.spec.id, name, self.tag)
        os.link(key, tmp, src_dir_fd=stg, dst_dir_fd=self.dfd, follow_symlinks=False)
        replace_entry(self.dfd, tmp, name)
        self.out.count(C.CREATED)

    def _claim(self, name: str, key: str, current: os.stat_result, stg: int) -> bool:
        """Publish an up-to-date target file as the copy of source inode ``key``, unless that
        target inode already stands for another source inode (links that were split in the
        source since the last pass)."""
        assert self.dfd is not None
        owner = f"i{current.st_dev:x}-{current.st_ino:x}"
        try:
            os.symlink(key, owner, dir_fd=stg)
        except FileExistsError:
            if os.readlink(owner, dir_fd=stg) != key:
                return False
        try:
            os.link(name, key, src_dir_fd=self.dfd, dst_dir_fd=stg, follow_symlinks=False)
        except FileExistsError:
            return False
        return True

    def large(self, name: str, st: os.stat_result) -> None:
        """Split a large file into byte ranges for several workers; a barrier finalizes it."""
        assert self.dfd is not None
        self.out.act("copy", self.out.path(name), "(in ranges)")
        group = new_id()
        tmp = temp_name(self.spec.id, name, group[:12])
        fd = os.open(tmp, _NEW_FILE, 0o600, dir_fd=self.dfd)
        try:
            os.ftruncate(fd, st.st_size)
        finally:
            os.close(fd)
        args = {"tmp": tmp, "ino": st.st_ino, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                "ctime_ns": st.st_ctime_ns, "sparse": data.is_sparse(st)}
        step = self.spec.range_size
        path = self.out.chunk.path
        self.ranges.append([
            Chunk(op="range", path=path, names=(name,), group=group,
                  args={**args, "start": start, "end": min(start + step, st.st_size)})
            for start in range(0, st.st_size, step)])
        then = Chunk(op="finalize", path=path, names=(name,), args=args, group=self.barrier)
        self.out.result.groups.append(Group(group, -(-st.st_size // step), then))
        self.waiting += 1

    def symlink(self, name: str, st: os.stat_result, dst: os.stat_result | None) -> None:
        """A symlink cannot change in place: a target link of the same length and mtime is
        current unless the source link was made (or touched) after it, as its ctime tells;
        only then are both links read and compared. Readlink moves a link's atime (no
        O_NOATIME for links), so what the copy is then compared with is taken after it."""
        if (dst is not None and stat.S_ISLNK(dst.st_mode) and dst.st_size == st.st_size
                and self.ctx.times.same(st.st_mtime_ns, dst.st_mtime_ns)):
            current = self._same_link(name, st, dst)
            if current is not None:
                self.unsettled.append((name, *current))
                return
        self.out.act("symlink", self.out.path(name))
        self.out.count(C.CREATED)
        if self.dry:
            return
        assert self.dfd is not None
        tmp = temp_name(self.spec.id, name, self.tag)
        os.symlink(os.readlink(name, dir_fd=self.sfd), tmp, dir_fd=self.dfd)
        # the kernel updates a link's atime on readlink (no O_NOATIME for links): stamp the
        # atime the source has now, so the copy still matches it
        self._place(name, tmp, os.stat(name, dir_fd=self.sfd, follow_symlinks=False))

    def _same_link(self, name: str, st: os.stat_result, dst: os.stat_result,
                   ) -> tuple[os.stat_result, os.stat_result] | None:
        """The (source, target) lstats to settle when the target link points where the
        source's does, else None."""
        if st.st_ctime_ns < dst.st_ctime_ns or self.dfd is None:
            return st, dst
        if os.readlink(name, dir_fd=self.sfd) != os.readlink(name, dir_fd=self.dfd):
            return None
        src_now, dst_now = dirs.lstat_at(name, self.sfd), dirs.lstat_at(name, self.dfd)
        if src_now is None or dst_now is None:
            raise FileNotFoundError(errno.ENOENT, "vanished while compared", name)
        return src_now, dst_now

    def special(self, name: str, st: os.stat_result, dst: os.stat_result | None) -> None:
        """Fifos, sockets and device nodes: recreated by mknod, never opened."""
        if (dst is not None and stat.S_IFMT(dst.st_mode) == stat.S_IFMT(st.st_mode)
                and dst.st_rdev == st.st_rdev):
            self.unsettled.append((name, st, dst))
            return
        self.out.act("mknod", self.out.path(name))
        self.out.count(C.CREATED)
        if self.dry:
            return
        assert self.dfd is not None
        tmp = temp_name(self.spec.id, name, self.tag)
        os.mknod(tmp, stat.S_IFMT(st.st_mode) | 0o600, st.st_rdev, dir_fd=self.dfd)
        self._place(name, tmp, st)

    def _place(self, name: str, tmp: str, st: os.stat_result) -> None:
        """Metadata onto a new non-regular temp entry, then rename it into place."""
        assert self.dfd is not None
        try:
            meta.apply_at(tmp, self.dfd, st, meta.read_xattrs(name, self.sfd, side=steps.SOURCE),
                          {}, None)
        except BaseException:
            discard(self.dfd, tmp)
            raise
        replace_entry(self.dfd, tmp, name)  # which discards the temp if it cannot


def _copy_range(ctx: Context, out: Outcome, sfd: int, dfd: int) -> None:
    """Copy one byte range of a large file into its shared temp file. A source that changed is
    left to ``finalize``, which checks the identity once all ranges are done."""
    a = out.chunk.args
    src = dirs.open_file(file_of(out.chunk), sfd)
    try:
        dst = os.open(a["tmp"], os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
        try:
            out.count(C.BYTES, data.copy_range(src, dst, a["start"], a["end"], a["sparse"]))
        finally:
            os.close(dst)
    finally:
        os.close(src)


def _finalize(ctx: Context, out: Outcome, sfd: int, dfd: int) -> None:
    """All ranges of a large file are done: stamp metadata and rename, unless a range failed
    (its error is listed already) or the source changed. The temp is never left behind."""
    a = out.chunk.args
    name = file_of(out.chunk)
    published = False
    try:
        if a.get("members_failed"):
            out.act("not published", out.path(name), "(a range failed; next pass takes it)")
            return
        st = os.stat(name, dir_fd=sfd, follow_symlinks=False)
        if (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns) != (
                a["ino"], a["size"], a["mtime_ns"], a["ctime_ns"]):
            out.count(C.CHANGED)
            out.act("changed", out.path(name), "(during copy; next pass takes it)")
            return
        fd = os.open(a["tmp"], os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
        try:
            meta.apply_all(fd, st, meta.read_xattrs(name, sfd, side=steps.SOURCE),
                           meta.read_xattrs(fd, side=steps.TARGET))
        finally:
            os.close(fd)
        replace_entry(dfd, a["tmp"], name)
        published = True
    finally:
        if not published:
            discard(dfd, a["tmp"])
    out.count(C.COPIED)


# a large file's chunks: an error is the file's, not its directory's
run_range = on_both_dirs(_copy_range, where=file_path)
run_finalize = on_both_dirs(_finalize, where=file_path)
