"""The verify pass: proves DST is a copy of SRC, reading both sides and writing neither.

A ``verify`` chunk lists one directory on both sides (or checks one slice of a huge one) and
reports every difference as a mismatch: an entry missing in the target, extra in the target, of
another type, with other metadata (owner, mode, mtime, xattrs and ACLs, project ID and flags
where both sides have them, symlink target, device number, link count and, within the chunk,
which names share an inode) or other content
(xxh3-128 of both sides). Files of ``large_file_size`` or more are hashed in ``verify_range``
chunks by several workers: equal ranges mean equal files, so no barrier is needed.

A mismatch is an item error of op ``verify`` (so it is kept with the pass record), counted as
``mismatches`` and not as ``errors``, and always printed. With ``sample`` < 1 a reproducible
random subset of the non-directory entries is checked; directories are always walked and checked.
"""

from __future__ import annotations

import os
import stat
import time
from collections import defaultdict

import xxhash

from fsclone.chunk import ItemError
from fsclone.fs import data, dirs, inodeflags, meta, steps
from fsclone.ops.context import Context, Outcome, file_of, file_path, on_both_dirs
from fsclone.ops.mountguard import other_filesystem
from fsclone.spec import PassSpec
from fsclone.stats import counters as C
from fsclone.text import printable

Xattrs = dict[str, bytes]
#: what an entry's project ID and flags are on the source, on the target
Attrs = tuple[inodeflags.Attrs, inodeflags.Attrs]
_UNREAD = (inodeflags.NONE, inodeflags.NONE)
_KINDS = {stat.S_IFREG: "file", stat.S_IFDIR: "directory", stat.S_IFLNK: "symlink",
          stat.S_IFIFO: "fifo", stat.S_IFSOCK: "socket", stat.S_IFCHR: "char device",
          stat.S_IFBLK: "block device"}


def drawn(spec: PassSpec, relpath: str) -> bool:
    """Whether the sample holds ``relpath``: decided by a hash of (seed, path) alone, so every
    worker on every node, and every rerun with the same seed, draws the same entries."""
    if spec.sample >= 1.0:
        return True
    return xxhash.xxh3_64_intdigest(os.fsencode(relpath), seed=spec.seed) < spec.sample * 2**64


def report(out: Outcome, relpath: str, differences: list[str]) -> None:
    """One mismatch for one entry: kept as an item error, counted, and always shown."""
    if not differences:
        return
    message = "; ".join(differences)
    out.result.errors.append(ItemError(relpath, "verify", 0, message))
    out.result.actions.append(f"mismatch {printable(relpath)}: {message}")
    out.count(C.MISMATCHES)


run_verify = on_both_dirs(lambda ctx, out, sfd, dfd: DirVerifier(ctx, out, sfd, dfd).run())
# one byte range of a large file on both sides; an error is the file's, not its directory's
run_verify_range = on_both_dirs(
    lambda ctx, out, sfd, dfd: _compare_range(out, sfd, dfd, file_of(out.chunk)),
    where=file_path)


def _compare_range(out: Outcome, sfd: int, dfd: int, name: str) -> None:
    a = out.chunk.args
    with dirs.FilePair(name, sfd, dfd) as (src, dst):
        if not same_content(out, src, dst, name, a["size"], a["mtime_ns"], a["start"], a["end"]):
            report(out, out.path(name), [f"content differs in bytes [{a['start']}, {a['end']})"])



def same_content(out: Outcome, src: int, dst: int, name: str, size: int, mtime_ns: int,
                 start: int, end: int) -> bool:
    """Hash bytes [start, end) of the open files ``src`` and ``dst``; the source's digest goes
    into the manifest when the pass writes one."""
    src_digest, read = data.hash_range(src, start, end)
    dst_digest, dst_read = data.hash_range(dst, start, end)
    out.count(C.HASHED, read + dst_read)
    if out.ctx.spec.manifest:
        out.result.manifest.append((out.path(name), size, mtime_ns, src_digest.hex(), start,
                                    start + read))
    return src_digest == dst_digest


class DirVerifier:
    """Compares the entries of one chunk in ``sfd`` with those in ``dfd``."""

    def __init__(self, ctx: Context, out: Outcome, sfd: int, dfd: int) -> None:
        self.ctx, self.out, self.sfd, self.dfd = ctx, out, sfd, dfd
        self.spec = ctx.spec
        #: name → (source inode, target inode) of the files linked more than once on a side
        self.links: dict[str, tuple[int, int]] = {}
        #: relative path → its differences, reported at the end: one mismatch per entry
        self.found: dict[str, list[str]] = defaultdict(list)

    def run(self) -> None:
        chunk = self.out.chunk
        names = self._whole_dir() if chunk.names is None else chunk.names
        for name in names:
            try:
                self.entry(name)
            except OSError as exc:
                self.out.fail(self.out.path(name), exc)
        self._link_groups()
        for rel, differences in self.found.items():
            report(self.out, rel, differences)

    def _whole_dir(self) -> list[str]:
        """List both sides: the directory's own metadata, the extra entries, the missing ones
        (through :meth:`entry`); a huge directory's later slices go out as chunks."""
        out = self.out
        src = dirs.list_kinds(self.sfd)
        dst = dirs.list_kinds(self.dfd)
        out.count(C.SCANNED, len(src))
        path = out.chunk.path
        if differences := self.meta_diffs(os.fstat(self.sfd), os.fstat(self.dfd),
                                          meta.read_xattrs(self.sfd, side=steps.SOURCE),
                                          meta.read_xattrs(self.dfd, side=steps.TARGET),
                                          self._read_attrs(self.sfd, self.dfd)):
            self.found[path] += differences
        for name in sorted(dst.keys() - src.keys()):
            if self._wanted(name, dst[name]):
                self.found[out.path(name)].append("extra in target")
        wanted = [name for name, is_dir in src.items() if self._wanted(name, is_dir)] \
            if self.ctx.filters.globs or self.spec.sample < 1.0 else list(src)
        size = self.spec.dir_slice
        for start in range(size, len(wanted), size):
            out.child("verify", path, names=tuple(wanted[start:start + size]))
        return wanted[:size]

    def _wanted(self, name: str, is_dir: bool) -> bool:
        """Whether an entry is checked: not excluded, and a directory or drawn by the sample
        (decided before any stat, so a small sample of a huge tree costs few)."""
        rel = self.out.path(name)
        return not self.ctx.filters.excluded(rel, is_dir) and (is_dir or drawn(self.spec, rel))

    # -- one entry --------------------------------------------------------------------------
    def entry(self, name: str) -> None:
        out = self.out
        rel = out.path(name)
        st = dirs.lstat_at(name, self.sfd)
        if st is None:
            return  # gone from the source since it was listed
        is_dir = stat.S_ISDIR(st.st_mode)
        if is_dir and other_filesystem(self.ctx, out, name, st):
            return
        if not is_dir:
            skipped = self.ctx.filters.age_skip(st)
            if skipped:
                out.count(skipped)
                return
            out.count(C.VERIFIED)
        dst = dirs.lstat_at(name, self.dfd)
        if dst is None:
            self.found[rel].append("missing in target")
        elif stat.S_IFMT(st.st_mode) != stat.S_IFMT(dst.st_mode):
            self.found[rel].append(f"type {_kind(st)} != {_kind(dst)}")
        elif is_dir:
            out.child("verify", rel)  # the child compares the directory's own metadata
        elif differences := self.non_dir(name, st, dst):
            self.found[rel] += differences

    def non_dir(self, name: str, st: os.stat_result, dst: os.stat_result) -> list[str]:
        """Differences of a file, symlink or special of the same type on both sides."""
        found: list[str] = []
        xattrs: tuple[Xattrs, Xattrs] | None = None
        attrs = _UNREAD  # symlinks and specials have no flags worth carrying
        if stat.S_ISREG(st.st_mode):
            found, xattrs, attrs = self.regular(name, st, dst)
        elif stat.S_ISLNK(st.st_mode):
            # readlink moves a link's atime (a kernel rule, no O_NOATIME for links): the one
            # trace a verify leaves, since undoing it would be a write
            src_target = os.readlink(name, dir_fd=self.sfd)
            dst_target = os.readlink(name, dir_fd=self.dfd)
            if src_target != dst_target:
                found.append(f"symlink target {src_target!r} != {dst_target!r}")
        elif st.st_rdev != dst.st_rdev:
            found.append(f"device {_dev(st)} != {_dev(dst)}")
        if st.st_nlink != dst.st_nlink:
            found.append(f"hard links {st.st_nlink} != {dst.st_nlink}")
        if max(st.st_nlink, dst.st_nlink) > 1:
            self.links[name] = (st.st_ino, dst.st_ino)
        if xattrs is None:
            xattrs = (meta.read_xattrs(name, self.sfd, side=steps.SOURCE),
                      meta.read_xattrs(name, self.dfd, side=steps.TARGET))
        return found + self.meta_diffs(st, dst, *xattrs, attrs)

    def regular(self, name: str, st: os.stat_result, dst: os.stat_result
                ) -> tuple[list[str], tuple[Xattrs, Xattrs] | None, Attrs]:
        """Size, then content unless the pass is metadata-only. A small file's xattrs, project
        ID and flags are read through the fds its content is read through (the cheapest way,
        per file, that counts with many small ones); a large file is handed to
        ``verify_range`` chunks."""
        if st.st_size != dst.st_size or self.spec.metadata_only \
                or st.st_size >= self.spec.large_file_size:
            attrs = self._attrs_at(name, st, dst)
            if st.st_size != dst.st_size:
                return [f"size {st.st_size} != {dst.st_size}"], None, attrs
            if not self.spec.metadata_only:
                self._ranges(name, st)
            return [], None, attrs
        with dirs.FilePair(name, self.sfd, self.dfd) as (src, dst_fd):
            same = same_content(self.out, src, dst_fd, name, st.st_size, st.st_mtime_ns, 0,
                                st.st_size)
            xattrs = (meta.read_xattrs(src, side=steps.SOURCE),
                      meta.read_xattrs(dst_fd, side=steps.TARGET))
            attrs = self._read_attrs(src, dst_fd)
        return ([] if same else ["content differs"]), xattrs, attrs

    def _read_attrs(self, src: int, dst: int) -> Attrs:
        """Both sides' project IDs and flags, through open fds (the source reads only what
        both sides hold: see fs.inodeflags.sides)."""
        carry = self.ctx.src_flags
        if not carry.any:
            return _UNREAD
        return carry.read(src), self.ctx.dst_flags.read(dst)

    def _attrs_at(self, name: str, st: os.stat_result, dst: os.stat_result) -> Attrs:
        """The same for a file not opened for its content, through opens of its own."""
        carry = self.ctx.src_flags
        if not carry.any:
            return _UNREAD
        return (carry.read_at(name, self.sfd, st),
                self.ctx.dst_flags.read_at(name, self.dfd, dst))

    def _ranges(self, name: str, st: os.stat_result) -> None:
        args = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
        step = self.spec.range_size
        for start in range(0, st.st_size, step):
            self.out.child("verify_range", self.out.chunk.path, names=(name,),
                           args={**args, "start": start, "end": min(start + step, st.st_size)})

    def meta_diffs(self, st: os.stat_result, dst: os.stat_result, src_x: Xattrs,
                   dst_x: Xattrs, attrs: Attrs = _UNREAD) -> list[str]:
        """Owner, mode, mtime, xattrs (ACLs included), project ID and flags (where both sides'
        filesystems have them). Owners are compared even when not
        root: a copy that could not set them is still not faithful. atime is not compared:
        users' reads move it after any copy, and a verify must not cry wolf on each."""
        found = []
        if (st.st_uid, st.st_gid) != (dst.st_uid, dst.st_gid):
            found.append(f"owner {st.st_uid}:{st.st_gid} != {dst.st_uid}:{dst.st_gid}")
        if st.st_mode != dst.st_mode and not stat.S_ISLNK(st.st_mode):  # a link's mode is fixed
            found.append(f"mode {st.st_mode:#o} != {dst.st_mode:#o}")
        if not self.ctx.times.same(st.st_mtime_ns, dst.st_mtime_ns):
            found.append(f"mtime {_when(st.st_mtime_ns)} != {_when(dst.st_mtime_ns)}")
        for key in sorted(src_x.keys() | dst_x.keys()) if src_x != dst_x else ():
            label = f"{'ACL' if key.startswith('system.posix_acl_') else 'xattr'} {key!r}"
            if key not in dst_x:
                found.append(f"{label} missing in target")
            elif key not in src_x:
                found.append(f"{label} extra in target")
            elif src_x[key] != dst_x[key]:
                found.append(f"{label} differs")
        return found + attrs[0].differences(attrs[1])

    def _link_groups(self) -> None:
        """Within this chunk, the names sharing an inode must be the same on both sides (across
        directories, the link counts compared per entry stand for the structure)."""
        by_src: dict[int, set[str]] = defaultdict(set)
        by_dst: dict[int, set[str]] = defaultdict(set)
        for name, (src_ino, dst_ino) in self.links.items():
            by_src[src_ino].add(name)
            by_dst[dst_ino].add(name)
        for name, (src_ino, dst_ino) in sorted(self.links.items()):
            here, there = by_src[src_ino] - {name}, by_dst[dst_ino] - {name}
            if here != there:
                self.found[self.out.path(name)].append(
                    f"hard-linked here with {_names(here)} in the source, "
                    f"with {_names(there)} in the target")


def _kind(st: os.stat_result) -> str:
    return _KINDS.get(stat.S_IFMT(st.st_mode), f"type {stat.S_IFMT(st.st_mode):#o}")


def _dev(st: os.stat_result) -> str:
    return f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"


def _when(ns: int) -> str:
    """A time as UTC to the nanosecond: two mtimes that differ by 1 ns must read differently."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ns // 10**9)) + f".{ns % 10**9:09d}"


def _names(names: set[str]) -> str:
    return ", ".join(printable(n) for n in sorted(names)) or "no other name"
