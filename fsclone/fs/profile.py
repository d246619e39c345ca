"""A side's filesystem profile (fsclone.fsprofile), found by statfs and by probes fsclone makes
itself, never guessed from names: a few syscalls, once a pass, by its coordinator.

The source is never written to: its kind, what its root answers (project IDs, flags) and its
stat latency. A target is also probed by writing, only to what nobody sees: an unnamed file
(``O_TMPFILE``) in its root; where it has none (Lustre, most FUSE), a private temp directory
(0700, one of fsclone's temp names) that is removed again, the root's atime and mtime put
back as they were.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from fsclone.fs import dirs, fstype, inodeflags, latency, xattrnames
from fsclone.fsprofile import ABSENT, FsProfile
from fsclone.schema import temp_name

#: seconds far outside any filesystem's range (year ~36800 either side of 1970): the kernel
#: stores the nearest time the filesystem can hold, and that is its limit
_FAR = float(2**40)
#: a probe time with a digit in every decimal place of its nanoseconds (2009)
_PROBE_NS = 1_234_567_891_234_567_891
#: the time steps filesystems keep, finest first (ns, µs, ms, whole and FAT's two seconds)
_STEPS = (1, 10, 100, 1_000, 10_000, 100_000, 1_000_000, 10_000_000, 100_000_000,
          1_000_000_000, 2_000_000_000)
#: open() errors meaning "no O_TMPFILE on this filesystem (or kernel)"
_NO_TMPFILE = {errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL}
#: copy_file_range errors meaning "not on this filesystem"
_NO_CFR = {errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP}


def kind_at(path: str) -> str:
    """The kind of filesystem holding the pass root ``path`` (fs.fstype); "absent" where
    there is none (a target a dry run has not made)."""
    try:
        fd = dirs.open_root(path)
    except FileNotFoundError:
        return ABSENT
    try:
        return fstype.fs_kind(fd)
    finally:
        os.close(fd)


def probe(path: str, pass_id: str, writes: bool) -> FsProfile:
    """The profile of the filesystem holding the pass root ``path``; with ``writes`` (a
    target, outside a dry run) also what only a write shows. A write probe the target
    refuses (read-only, a root not ours) leaves those fields unknown."""
    try:
        fd = dirs.open_root(path)
    except FileNotFoundError:
        return FsProfile(kind=ABSENT)
    try:
        kind = fstype.fs_kind(fd)
        projids, flags = inodeflags.holds(fd, kind)
        found = FsProfile(kind=kind, latency_us=latency.stat_us(path), project_ids=projids,
                          flags=flags, skipped_xattrs=xattrnames.SKIPPED)
        if not writes:
            return found
        try:
            with _probe_files(fd, pass_id) as (tmpfile, a, b):
                step, low, high = _times(a)
                return FsProfile(
                    kind=kind, latency_us=found.latency_us, time_step_ns=step, time_low_ns=low,
                    time_high_ns=high, tmpfile=tmpfile, copy_file_range=_copies(a, b),
                    project_ids=projids and inodeflags.takes_projids(a), flags=flags,
                    flush_before_times=kind == "lustre", skipped_xattrs=xattrnames.SKIPPED)
        except OSError:
            return found
    finally:
        os.close(fd)


@contextmanager
def _probe_files(root: int, pass_id: str) -> Iterator[tuple[bool, int, int]]:
    """Two empty regular files of ours, open for reading and writing, that nobody sees: unnamed
    in ``root`` (True) or in a private temp directory (False), removed on the way out."""
    try:
        a = _unnamed(root)
    except OSError as exc:
        if exc.errno not in _NO_TMPFILE:
            raise
    else:
        with _closing(a), _closing(_unnamed(root)) as b:
            yield True, a, b
        return
    with _private_dir(root, pass_id) as tmp, _closing(_create("a", tmp)) as a, \
            _closing(_create("b", tmp)) as b:
        yield False, a, b


@contextmanager
def _closing(fd: int) -> Iterator[int]:
    try:
        yield fd
    finally:
        os.close(fd)


def _unnamed(root: int) -> int:
    if not hasattr(os, "O_TMPFILE"):  # a Python or libc without it
        raise OSError(errno.EOPNOTSUPP, "no O_TMPFILE")
    return os.open(".", os.O_RDWR | os.O_TMPFILE | os.O_CLOEXEC, 0o600, dir_fd=root)


def _create(name: str, dir_fd: int) -> int:
    return os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                   0o600, dir_fd=dir_fd)


@contextmanager
def _private_dir(root: int, pass_id: str) -> Iterator[int]:
    """A temp directory of ours in ``root`` (0700), removed on the way out, and the root's
    atime and mtime put back: making and removing an entry moves them."""
    before = os.fstat(root)
    name = temp_name(pass_id, "profile", os.urandom(6).hex())
    os.mkdir(name, 0o700, dir_fd=root)
    try:
        with _closing(dirs.open_dir(name, root)) as fd:
            try:
                yield fd
            finally:
                for entry in os.listdir(fd):
                    os.unlink(entry, dir_fd=fd)
    finally:
        try:
            os.rmdir(name, dir_fd=root)
        finally:
            with suppress(OSError):
                os.utime(root, ns=(before.st_atime_ns, before.st_mtime_ns))


def _times(fd: int) -> tuple[int, int | None, int | None]:
    """The step and range (None: no limit seen) of the times the filesystem of ``fd`` keeps:
    stamp the file and read back what it kept."""
    os.utime(fd, ns=(_PROBE_NS, _PROBE_NS))
    kept = os.fstat(fd).st_mtime_ns
    step = next((s for s in _STEPS if kept == _PROBE_NS - _PROBE_NS % s), 1)
    return step, _stored(fd, -_FAR), _stored(fd, _FAR)


def _stored(fd: int, seconds: float) -> int | None:
    """The mtime the filesystem keeps when asked for ``seconds``; None when it kept it."""
    os.utime(fd, (seconds, seconds))
    kept = os.fstat(fd).st_mtime_ns
    return None if kept == int(seconds) * 10**9 else kept


def _copies(a: int, b: int) -> bool:
    """Whether the kernel copies between two files of this filesystem (copy_file_range)."""
    os.pwrite(a, b"x", 0)
    try:
        return os.copy_file_range(a, b, 1, 0, 0) == 1
    except OSError as exc:
        if exc.errno in _NO_CFR:
            return False
        raise
