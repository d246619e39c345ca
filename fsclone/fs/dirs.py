"""Opening and listing directories relative to a root fd, never following symlinks, never
touching atimes (``O_NOATIME`` where permitted)."""

from __future__ import annotations

import errno
import functools
import os
import stat
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from fsclone.fs import steps

NOATIME = getattr(os, "O_NOATIME", 0)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


def _open_noatime(name: str, flags: int, dir_fd: int | None) -> int:
    """Open without updating atime; O_NOATIME is refused (EPERM) on files we do not own."""
    if NOATIME:
        try:
            return os.open(name, flags | NOATIME, dir_fd=dir_fd)
        except PermissionError as exc:
            if exc.errno != errno.EPERM:
                raise
    return os.open(name, flags, dir_fd=dir_fd)


def open_dir(name: str, dir_fd: int | None = None) -> int:
    """Open a directory entry for reading (O_NOFOLLOW: a symlink raises ELOOP/ENOTDIR)."""
    return _open_noatime(name, _DIR_FLAGS, dir_fd)


def open_file(name: str, dir_fd: int) -> int:
    """Open a regular file for reading. O_NONBLOCK keeps a fifo swapped in after lstat from
    blocking; the caller checks the fd's type and identity with fstat."""
    try:
        return _open_noatime(name, _FILE_FLAGS, dir_fd)
    except BlockingIOError as refused:
        return _open_when_lease_lets_go(name, dir_fd, refused)


def _open_when_lease_lets_go(name: str, dir_fd: int, refused: BlockingIOError) -> int:
    """O_NONBLOCK also makes the open of a file under a lease (an NFS server's delegation, a
    Samba oplock) fail with EWOULDBLOCK instead of waiting while the kernel recalls the lease.
    Such a file is in use, not unreadable: while the kernel lists a lease on it, the open is
    retried, as a blocking open would wait, until the holder lets go or the lease is broken.
    EWOULDBLOCK twice in a row with no lease listed (a filesystem's own reasons, such as a file
    out on tape) is raised: the first may come from a lease let go in between."""
    deadline = time.monotonic() + _lease_wait()
    pause = 0.001
    unleased = 0
    while True:
        unleased = 0 if _under_lease(name, dir_fd) else unleased + 1
        if unleased == 2 or time.monotonic() > deadline:
            raise refused
        time.sleep(pause)
        pause = min(pause * 2, 0.1)
        try:
            return _open_noatime(name, _FILE_FLAGS, dir_fd)
        except BlockingIOError as again:
            refused = again


def _under_lease(name: str, dir_fd: int) -> bool:
    """Whether /proc/locks lists a lease or an NFS delegation on the file (by inode number: a
    filesystem's st_dev need not be the one /proc/locks prints); True when it cannot tell."""
    try:
        inode = str(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_ino)
        with open("/proc/locks") as locks:
            for line in locks:  # "1: LEASE  BREAKING  READ 15128 fe:00:2621545 0 EOF"
                fields = [f for f in line.split() if f != "->"]  # "->": a waiter's line
                if len(fields) > 5 and fields[1] in ("LEASE", "DELEG") \
                        and fields[5].rsplit(":", 1)[-1] == inode:
                    return True
    except OSError:
        return True
    return False


def _lease_wait() -> float:
    """How long a lease can hold up an open: the kernel breaks a lease after
    fs.lease-break-time, but NFS delegations wait for the NFS server's own lease time."""
    return max(_read_seconds(path, default) for path, default in _LEASE_TIMES) + _LEASE_MARGIN


#: where the kernel keeps the times a lease may outlive a break, and their defaults
_LEASE_TIMES = (("/proc/sys/fs/lease-break-time", 45.0), ("/proc/fs/nfsd/nfsv4leasetime", 0.0))
#: seconds waited past them, for the kernel to get round to breaking the lease
_LEASE_MARGIN = 5.0


@functools.cache
def _read_seconds(path: str, default: float) -> float:
    try:
        with open(path) as f:
            return float(f.read())
    except (OSError, ValueError):
        return default


def open_root(path: str) -> int:
    """Open a pass root (the only place an absolute path is resolved; symlinks allowed)."""
    return _open_noatime(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, None)


def open_path(root_fd: int, relpath: str) -> int:
    """Open ``relpath`` below ``root_fd`` one component at a time, refusing symlinks."""
    if not relpath:
        return os.dup(root_fd)
    fd = root_fd
    for part in relpath.split("/"):
        try:
            nfd = open_dir(part, fd)
        finally:
            if fd != root_fd:
                os.close(fd)
        fd = nfd
    return fd


def make_path(root_fd: int, relpath: str) -> tuple[int, int]:
    """:func:`open_path`, making the directories missing on the way (0700: their own metadata
    is applied later, when their contents are in). Another worker making the same directory at
    the same moment is no error. Returns the fd and how many directories were made."""
    if not relpath:
        return os.dup(root_fd), 0
    fd, made = root_fd, 0
    for part in relpath.split("/"):
        try:
            try:
                nfd = open_dir(part, fd)
            except FileNotFoundError:
                try:
                    os.mkdir(part, 0o700, dir_fd=fd)
                    made += 1
                except FileExistsError:
                    pass
                nfd = open_dir(part, fd)
        finally:
            if fd != root_fd:
                os.close(fd)
        fd = nfd
    return fd, made


@contextmanager
def opened(fd: int) -> Iterator[int]:
    try:
        yield fd
    finally:
        os.close(fd)


def list_dir(dir_fd: int) -> list[os.DirEntry[str]]:
    """Every entry of a directory, with its name and type (d_type) but no stat yet: a huge
    directory's chunk stats only the entries it keeps, and hands the others out by name. An
    error propagates, because a listing that is not complete must never be taken as one
    (deletion depends on it)."""
    with os.scandir(dir_fd) as it:
        return list(it)


def list_names(dir_fd: int) -> list[str]:
    with os.scandir(dir_fd) as it:
        return [entry.name for entry in it]


def lstat_at(name: str, dir_fd: int) -> os.stat_result | None:
    """lstat an entry, None when it does not exist."""
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def make_writable(dir_fd: int) -> bool:
    """Give the owner write and search permission on a directory it cannot write into, so a
    non-root pass can change entries in its own read-only target directories (as rsync does);
    the directory's own metadata, applied after its entries, puts the mode back. Returns
    whether the mode was changed (never for root, who needs no permission bits)."""
    uid = os.geteuid()
    if uid == 0:
        return False
    st = os.fstat(dir_fd)
    if st.st_uid != uid or st.st_mode & stat.S_IRWXU == stat.S_IRWXU:
        return False
    try:
        os.fchmod(dir_fd, stat.S_IMODE(st.st_mode) | stat.S_IRWXU)
    except OSError as exc:
        steps.mark(exc, steps.MODE, steps.TARGET)
        raise
    return True


def list_kinds(dir_fd: int) -> dict[str, bool]:
    """Every name in a directory, mapped to whether it is a directory (from d_type, so no stat
    per entry where the filesystem reports types)."""
    with os.scandir(dir_fd) as it:
        return kinds_of(it)


def kinds_of(entries: Iterable[os.DirEntry[str]]) -> dict[str, bool]:
    """Each listed entry's name, mapped to whether it is a directory (its d_type; an lstat
    where the filesystem reports none)."""
    return {entry.name: entry.is_dir(follow_symlinks=False) for entry in entries}


class FilePair:
    """The file ``name`` opened for reading on both sides (atimes untouched), closed on exit.
    A class, not a generator: once per small file, the cheaper context manager counts."""

    def __init__(self, name: str, sfd: int, dfd: int) -> None:
        self.src = open_file(name, sfd)
        try:
            self.dst = open_file(name, dfd)
        except BaseException:
            os.close(self.src)
            raise

    def __enter__(self) -> tuple[int, int]:
        return self.src, self.dst

    def __exit__(self, *exc: object) -> None:
        os.close(self.dst)
        os.close(self.src)
