"""Project IDs and inode flags: read from one side, set on the other, last of all metadata.

Both live behind ioctls on an open descriptor (not O_PATH): ``FS_IOC_FSGETXATTR`` /
``FS_IOC_FSSETXATTR`` for the project ID (``struct fsxattr``), ``FS_IOC_GETFLAGS`` /
``FS_IOC_SETFLAGS`` for the flags (the ``chattr`` letters). The same calls work on XFS, ext4,
btrfs, Lustre and, for a few flags and no project IDs, tmpfs.

Carried: immutable, append-only, sync, dirsync, nodump, noatime and projinherit (:data:`CARRIED`).
Left alone, because the filesystem sets them itself or they describe how it lays data out rather
than a user's policy: extents, inline data, huge file, EA inode, htree index, encryption, verity,
casefold (fixed once a directory has entries), DAX, compression, topdir, journal-data, and
nocow (btrfs honours it only on an empty file and ignores it, without an error, after data:
carried after the copy it would never match). Bits outside :data:`CARRIED` on a target are kept
as they are.

Immutable and append-only (:data:`LOCKS`) forbid every later change, a rename or a link of the
inode included: they are set last, after times, and on a new file only once it has its name.

What each side holds is the pass's profile (fsclone.fsprofile, found by :func:`holds` and
:func:`takes_projids` at the pass's start): project IDs only where both filesystems hold them
(tmpfs and btrfs, known by their statfs magic, hold none; a target is probed on a file of
ours), flags only where both roots answer ``FS_IOC_GETFLAGS``. The source is read only for what
the target can hold, and a side that refuses later (ENOTTY, EOPNOTSUPP, EINVAL) is not asked
again by that worker.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

from fsclone.fs import dirs, steps
from fsclone.fs.meta import EntryChanged
from fsclone.fsprofile import FsProfile


def _ioc(direction: int, kind: str, nr: int, size: int) -> int:
    """An ioctl number as the kernel's _IOC macro builds it (x86_64, asm-generic/ioctl.h):
    direction in bits 30-31 (1 write, 2 read: the caller's point of view), the argument's size
    in bits 16-29, the type letter in bits 8-15, the number in bits 0-7."""
    return direction << 30 | size << 16 | ord(kind) << 8 | nr


_IOC_WRITE, _IOC_READ = 1, 2
#: struct fsxattr: u32 xflags @0, u32 extsize @4, u32 nextents @8, u32 projid @12,
#: u32 cowextsize @16, 8 bytes of padding: 28 bytes
_FSXATTR = struct.Struct("=IIIII8x")
_PROJID_AT = 12
#: _IOR('X', 31, struct fsxattr) = 0x801C581F, _IOW('X', 32, struct fsxattr) = 0x401C5820
FS_IOC_FSGETXATTR = _ioc(_IOC_READ, "X", 31, _FSXATTR.size)
FS_IOC_FSSETXATTR = _ioc(_IOC_WRITE, "X", 32, _FSXATTR.size)
#: _IOR('f', 1, long) = 0x80086601, _IOW('f', 2, long) = 0x40086602; the kernel reads and
#: writes an int through the pointer, whatever the number says
FS_IOC_GETFLAGS = _ioc(_IOC_READ, "f", 1, struct.calcsize("l"))
FS_IOC_SETFLAGS = _ioc(_IOC_WRITE, "f", 2, struct.calcsize("l"))
_FLAGS = struct.Struct("=I4x")  # the int the kernel uses, in a long's room
_NO_FLAGS = bytes(_FLAGS.size)
_NO_FSXATTR = bytes(_FSXATTR.size)

#: FS_*_FL, the chattr letters fsclone carries
NAMES = {
    0x00000008: "sync",  # S
    0x00000010: "immutable",  # i
    0x00000020: "append",  # a
    0x00000040: "nodump",  # d
    0x00000080: "noatime",  # A
    0x00010000: "dirsync",  # D
    0x20000000: "projinherit",  # P
}
CARRIED = sum(NAMES)
IMMUTABLE, APPEND = 0x10, 0x20
#: the flags that forbid any later change of the inode: set last
LOCKS = IMMUTABLE | APPEND
#: filesystems whose project ID reads 0 for every inode and can be nothing else (the kernel
#: fills it in for them): not read, on either side
NO_PROJECT_IDS = {"tmpfs", "btrfs"}
#: "this filesystem (or this kind of inode) has no such thing"
_UNSUPPORTED = {errno.ENOTTY, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL}


class Attrs(NamedTuple):
    """An inode's project ID and carried flags; None where its filesystem has none (a tuple:
    made for every file a verify reads)."""

    projid: int | None = None
    flags: int | None = None

    def differences(self, other: Attrs) -> list[str]:
        """What ``other`` (the target) lacks of these (the source's), one phrase each; a side
        without the thing compares equal."""
        found = []
        if None not in (self.projid, other.projid) and self.projid != other.projid:
            found.append(f"project ID {self.projid} != {other.projid}")
        if None not in (self.flags, other.flags) and self.flags != other.flags:
            found.append(f"flags {describe(self.flags)} != {describe(other.flags)}")
        return found


NONE = Attrs()
#: what a new file has in a directory without carried flags (nothing to inherit): a fresh
#: inode takes its project ID only from a PROJINHERIT directory, and its flags only from
#: those of its directory (XFS, ext4, tmpfs)
FRESH = Attrs(0, 0)


def describe(flags: int | None) -> str:
    """Flags as chattr's long names, for reports: "immutable,nodump", "-" for none."""
    return ",".join(name for bit, name in NAMES.items() if (flags or 0) & bit) or "-"


class Side:
    """One side of a pass (one per worker): reads and sets what its filesystem holds, and
    remembers what it refused (learnt at the first refusal, never asked again). A source side
    made by :func:`sides` reads only what its target can hold."""

    __slots__ = ("_buf", "flags", "name", "projids", "settable")

    def __init__(self, projids: bool = False, flags: bool = False,
                 name: str = steps.TARGET) -> None:
        """``projids``, ``flags``: whether the side's filesystem holds them (its profile);
        ``name``: steps.SOURCE or TARGET, what its errors are marked with."""
        self.name = name
        self.projids = projids
        self.flags = flags
        #: the carried flags this side accepted or was not yet asked to set
        self.settable = CARRIED
        #: the flags ioctl's buffer, filled in place (one Side per worker thread)
        self._buf = bytearray(_FLAGS.size)

    @property
    def any(self) -> bool:
        """Whether this side has anything to read."""
        return self.projids or self.flags

    def read(self, fd: int, projids: bool = True) -> Attrs:
        """The project ID (unless not ``projids``: the other side has none) and carried flags
        of an open inode (not O_PATH)."""
        projid = flags = None
        if self.projids and projids:
            try:
                projid = self._projid(fd)
            except OSError as exc:
                self.projids = self._supported(exc)
        if self.flags:
            try:
                flags = self._get(fd) & CARRIED
            except OSError as exc:
                self.flags = self._supported(exc)
        return Attrs(projid, flags)

    def read_new(self, fd: int) -> Attrs | None:
        """:meth:`read` for the source of a new file, on the path of every one: None when it
        has no project ID and no carried flags (most files), which a new inode has already in
        a directory without flags. One ioctl where project IDs are not carried."""
        projid = 0
        if self.projids:
            try:
                projid = self._projid(fd)
            except OSError as exc:
                self.projids = self._supported(exc)
        flags = 0
        if self.flags:
            buf = self._buf
            try:
                fcntl.ioctl(fd, FS_IOC_GETFLAGS, buf, True)
            except OSError as exc:
                self.flags = self._supported(exc)
            else:
                if buf != _NO_FLAGS:
                    flags = int.from_bytes(buf[:4], sys.byteorder) & CARRIED
        if not projid and not flags:
            return None
        return Attrs(projid if self.projids else None, flags if self.flags else None)

    def zero(self) -> Attrs:
        """What :meth:`read_new`'s None stands for: nothing, on what this side reads."""
        return Attrs(0 if self.projids else None, 0 if self.flags else None)

    def read_at(self, name: str, dir_fd: int, st: os.stat_result, projids: bool = True) -> Attrs:
        """:meth:`read` for a regular file or directory of ``dir_fd``, opened for the ioctls
        and proved to be the inode ``st`` was taken of (see :func:`open_checked`)."""
        if not self.any:
            return NONE
        fd, _ = open_checked(name, dir_fd, st)
        try:
            return self.read(fd, projids)
        finally:
            os.close(fd)

    def set_projid(self, fd: int, projid: int | None, have: int | None = None) -> None:
        """Give an inode the project ID (None: nothing to carry; ``have``: the one it is
        known to have)."""
        if projid is None or not self.projids or projid == have:
            return
        try:
            raw = bytearray(fcntl.ioctl(fd, FS_IOC_FSGETXATTR, _NO_FSXATTR))
            if _FSXATTR.unpack(raw)[3] == projid:
                return
            struct.pack_into("=I", raw, _PROJID_AT, projid)
            fcntl.ioctl(fd, FS_IOC_FSSETXATTR, bytes(raw))
        except OSError as exc:
            self.projids = self._supported(exc)

    def set_flags(self, fd: int, flags: int | None, locks: bool = True,
                  have: int | None = None) -> None:
        """Make an inode's carried flags ``flags`` (None: nothing to carry), keeping the bits
        its filesystem manages; without ``locks``, immutable and append-only wait (see
        :meth:`lock`); ``have``: the carried flags it is known to have. A flag the filesystem
        refuses is learnt and left out from then on."""
        if flags is None or not self.flags or flags & (CARRIED if locks else ~LOCKS) == have:
            return
        try:
            have = self._get(fd)
        except OSError as exc:
            self.flags = self._supported(exc)
            return
        want = (have & ~CARRIED) | (flags & self.settable & (CARRIED if locks else ~LOCKS))
        if want == have:
            return
        try:
            self._set(fd, want)
        except OSError as exc:
            self._supported(exc)
            self._learn(fd, have, want)

    def lock(self, fd: int, flags: int | None) -> None:
        """Set immutable and append-only, once the inode has its name and all else."""
        if flags and flags & LOCKS:
            self.set_flags(fd, flags)

    def _learn(self, fd: int, have: int, want: int) -> None:
        """The filesystem refused some of the flags in ``want``: add them one at a time, and
        remember those refused."""
        for bit in NAMES:
            if (want ^ have) & bit:
                try:
                    self._set(fd, have ^ bit)
                    have ^= bit
                except OSError as exc:
                    self._supported(exc)
                    self.settable &= ~bit

    def unlock(self, fd: int) -> int:
        """Clear immutable and append-only; returns the flags the inode had (0: nothing to
        clear, or no flags here)."""
        if not self.flags:
            return 0
        try:
            flags = self._get(fd)
        except OSError as exc:
            self.flags = self._supported(exc)
            return 0
        if flags & LOCKS:
            self._set(fd, flags & ~LOCKS)
        return flags

    @contextmanager
    def unlocked(self, fd: int, restore: bool = True) -> Iterator[None]:
        """Immutable and append-only cleared for the block, then set again: how an inode
        that must change (or a directory whose entries must) is changed at all. Without
        ``restore`` they are put back only if the block fails: the block ends by setting the
        flags itself (``fs.meta.apply_all``'s last step)."""
        flags = self.unlock(fd)
        if not flags & LOCKS:
            yield
            return
        try:
            yield
        except BaseException:
            self._set(fd, flags)
            raise
        if restore:
            self._set(fd, flags)

    @contextmanager
    def changing(self, fd: int, want: Attrs, known: Attrs = NONE) -> Iterator[Pending]:
        """For a block that changes an inode's metadata and ends with the Pending it is given
        (project ID and flags ``want``): immutable and append-only cleared first, as
        :meth:`unlocked` does. ``known``: the inode's project ID and carried flags as read
        since its last change (by the compare that found it differs). Without a lock among
        them, neither is read again: on Lustre every read is a metadata server round trip."""
        locked = known.flags is None or bool(known.flags & LOCKS)
        if not locked:
            yield Pending(fd, want, self, have=known)
            return
        with self.unlocked(fd, restore=want.flags is None):
            # the flags were read, and the locks cleared, again: only the project ID holds
            yield Pending(fd, want, self, have=known._replace(flags=None))

    @contextmanager
    def unlocked_at(self, name: str, dir_fd: int) -> Iterator[None]:
        """:meth:`unlocked` for an entry of ``dir_fd`` (a regular file or a directory; any
        other kind has no flags to clear, nor does an entry that is not there)."""
        st = dirs.lstat_at(name, dir_fd)
        if st is None or not self.flags or not (stat.S_ISREG(st.st_mode)
                                                or stat.S_ISDIR(st.st_mode)):
            yield
            return
        fd, _ = open_checked(name, dir_fd, st)
        try:
            with self.unlocked(fd):
                yield
        finally:
            os.close(fd)

    def _supported(self, exc: OSError) -> bool:
        """False for a refusal meaning "not here"; any other error is the item's, raised,
        marked as this side's FLAGS step."""
        if exc.errno in _UNSUPPORTED:
            return False
        raise steps.mark(exc, steps.FLAGS, self.name)

    @staticmethod
    def _projid(fd: int) -> int:
        return int(_FSXATTR.unpack(fcntl.ioctl(fd, FS_IOC_FSGETXATTR, _NO_FSXATTR))[3])

    @staticmethod
    def _get(fd: int) -> int:
        return int(_FLAGS.unpack(fcntl.ioctl(fd, FS_IOC_GETFLAGS, _NO_FLAGS))[0])

    def _set(self, fd: int, flags: int) -> None:
        try:
            fcntl.ioctl(fd, FS_IOC_SETFLAGS, _FLAGS.pack(flags))
        except OSError as exc:
            steps.mark(exc, steps.FLAGS, self.name)
            raise


def sides(src: FsProfile, dst: FsProfile) -> tuple[Side, Side]:
    """The source's and the target's Side for one worker, from the pass's profiles. The
    source reads only what both hold: it is read to be carried (and compared, by a verify),
    and what the target cannot hold is neither."""
    return (Side(src.project_ids and dst.project_ids, src.flags and dst.flags, steps.SOURCE),
            Side(dst.project_ids, dst.flags, steps.TARGET))


def holds(root: int, kind: str) -> tuple[bool, bool]:
    """Whether the filesystem of the open directory ``root`` (of ``kind``, fs.fstype) holds
    project IDs and flags, as far as reading its root shows (for a profile)."""
    return (kind not in NO_PROJECT_IDS and _answers(root, FS_IOC_FSGETXATTR, _NO_FSXATTR),
            _answers(root, FS_IOC_GETFLAGS, _NO_FLAGS))


def _answers(fd: int, request: int, buf: bytes) -> bool:
    try:
        fcntl.ioctl(fd, request, buf)
    except OSError as exc:
        if exc.errno not in _UNSUPPORTED:
            raise
        return False
    return True


def takes_projids(fd: int) -> bool:
    """Whether a new file of ours nobody else sees (``fd``) takes a project ID: tmpfs reads 0
    for every file and refuses any other, so without the probe each file would cost a read of
    the source's project ID and of its own. EPERM (not ours to set: a non-root pass) is the
    same here."""
    side = Side(True, True)
    try:
        side.set_projid(fd, 1)
        side.set_projid(fd, 0)
    except OSError:
        return False
    return side.projids


def open_checked(name: str, dir_fd: int, st: os.stat_result) -> tuple[int, os.stat_result]:
    """Open the regular file or directory ``name`` of ``dir_fd`` for the ioctls (O_RDONLY,
    O_NOFOLLOW, O_NONBLOCK, O_NOATIME), proved to be the inode ``st`` was taken of; a user's
    swap since (a symlink, another file) raises EntryChanged, and nothing is done. Returns
    the fd and its fstat."""
    try:
        fd = dirs.open_dir(name, dir_fd) if stat.S_ISDIR(st.st_mode) \
            else dirs.open_file(name, dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise EntryChanged(name) from exc
        raise
    now = os.fstat(fd)
    if (now.st_dev, now.st_ino, stat.S_IFMT(now.st_mode)) != (
            st.st_dev, st.st_ino, stat.S_IFMT(st.st_mode)):
        os.close(fd)
        raise EntryChanged(name)
    return fd, now




class Pending:
    """What one target inode is to get after its times (``fs.meta.apply_all``'s ``then``):
    its project ID, then its flags; ``locks`` False for a new file that has no name yet.
    ``have``: what the inode is known to have (a new file in a directory it inherits nothing
    from)."""

    __slots__ = ("fd", "have", "locks", "side", "want")

    def __init__(self, fd: int, want: Attrs, side: Side, locks: bool = True,
                 have: Attrs = NONE) -> None:
        self.fd, self.want, self.side, self.locks, self.have = fd, want, side, locks, have

    def __call__(self) -> None:
        self.side.set_projid(self.fd, self.want.projid, self.have.projid)
        self.side.set_flags(self.fd, self.want.flags, self.locks, self.have.flags)


def plain(directory: Attrs) -> bool:
    """Whether a file just made in ``directory`` is FRESH: it has no carried flags to give."""
    return not directory.flags
