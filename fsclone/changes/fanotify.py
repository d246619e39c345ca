"""The change feed of a local filesystem: fanotify (Linux, root).

One filesystem mark on SRC's filesystem (``FAN_MARK_FILESYSTEM``) with ``FAN_REPORT_DFID_NAME``:
every event names the directory it happened in by a file handle, and the entry by its name.
The handle is opened (``open_by_handle_at`` through a descriptor of SRC, so on SRC's mount) and
its path read back from ``/proc/self/fd``; events in directories outside SRC are dropped, and
the rest become :class:`DirtyDir`\\ s. A directory whose handle no longer opens was removed:
the event that removed it dirtied its parent, which is all its own events could have asked.

The kernel's queue holds 16384 events (``FAN_UNLIMITED_QUEUE`` is not asked for, so that a
reader that falls behind learns it): past that it drops events and queues ``FAN_Q_OVERFLOW``,
read here as :class:`FeedGap`. Nothing can be replayed, so the cursor is only the time of the
last read; what was read and not yet applied is the pending store's (fsclone.state.changes).
"""

from __future__ import annotations

import ctypes
import errno
import os
import select
import stat
import struct
import time

from fsclone.changes.feed import DirtyDir, FeedGap
from fsclone.errors import UsageError

_FAN_CLOEXEC, _FAN_NONBLOCK, _FAN_CLASS_NOTIF = 0x1, 0x2, 0x0
_FAN_REPORT_DFID_NAME = 0x400 | 0x800  # FAN_REPORT_DIR_FID | FAN_REPORT_NAME
_FAN_MARK_ADD, _FAN_MARK_FILESYSTEM = 0x1, 0x100
FAN_MODIFY, FAN_ATTRIB, FAN_CLOSE_WRITE = 0x2, 0x4, 0x8
FAN_MOVED_FROM, FAN_MOVED_TO, FAN_CREATE, FAN_DELETE = 0x40, 0x80, 0x100, 0x200
FAN_Q_OVERFLOW, FAN_ONDIR = 0x4000, 0x40000000
#: what is asked for: every change to an entry or its data, on directories too. Moves of an
#: inode itself (``FAN_MOVE_SELF``, ``FAN_DELETE_SELF``) add nothing: the parents hear of them
MASK = (FAN_CREATE | FAN_DELETE | FAN_MOVED_FROM | FAN_MOVED_TO | FAN_MODIFY | FAN_ATTRIB
        | FAN_CLOSE_WRITE | FAN_ONDIR)
_NEW_HERE = FAN_CREATE | FAN_MOVED_TO
#: the events after which a copy may write a file anew (a new name, new data, a new mtime:
#: only a chmod or an xattr is mended in place, and the event does not say which it was):
#: see :meth:`FanotifyFeed._linked_elsewhere`
_REWRITTEN = FAN_CREATE | FAN_MOVED_TO | FAN_MODIFY | FAN_CLOSE_WRITE | FAN_ATTRIB
#: the whole tree, recursively: what a change to a file with names in other directories dirties
WHOLE_TREE = DirtyDir(b"", True)
_INFO_DFID_NAME = 2
#: struct fanotify_event_metadata: event_len, vers, reserved, metadata_len, mask, fd, pid
_METADATA = struct.Struct("=IBBHQii")
#: struct fanotify_event_info_header (info_type, pad, len), then __kernel_fsid_t
_INFO_HEADER = struct.Struct("=BBH8x")
_HANDLE = struct.Struct("=Ii")  # struct file_handle: handle_bytes, handle_type, f_handle[]
_METADATA_VERSION = 3
_READ_SIZE = 1 << 20
#: events of one read at most, so that a busy filesystem cannot hold a read forever
_MAX_BATCH = 65536

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
_libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int,
                                ctypes.c_char_p]
_libc.open_by_handle_at.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int]


def _failed(call: str) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{call}: {os.strerror(err)}")


class FanotifyFeed:
    """Dirty directories below ``src`` from a fanotify mark on its filesystem (a
    :class:`fsclone.changes.feed.ChangeFeed`). The mark is made here, so every change from
    this moment on is seen: make the feed before anything (a full sync) looks at SRC."""

    def __init__(self, src: str) -> None:
        self.root_fd = os.open(src, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.root = os.readlink(f"/proc/self/fd/{self.root_fd}".encode())
        self.fd = -1
        self.events = 0  # events read, since the feed was made
        self._read_at = time.time_ns()
        try:
            self.fd = _libc.fanotify_init(
                _FAN_CLOEXEC | _FAN_NONBLOCK | _FAN_CLASS_NOTIF | _FAN_REPORT_DFID_NAME,
                os.O_RDONLY | os.O_CLOEXEC | os.O_LARGEFILE)
            if self.fd < 0:
                raise _failed("fanotify_init")
            if _libc.fanotify_mark(self.fd, _FAN_MARK_ADD | _FAN_MARK_FILESYSTEM, MASK,
                                   self.root_fd, None) < 0:
                raise _failed(f"fanotify_mark {src}")
            self._poll = select.poll()
            self._poll.register(self.fd, select.POLLIN)
        except OSError as exc:
            self.close()
            raise UsageError(f"cannot watch {src} with fanotify ({exc.strerror}; it needs root "
                             "and a filesystem that reports file handles)") from None

    def fileno(self) -> int:
        return self.fd

    def read(self, timeout: float) -> list[DirtyDir]:
        """The directories the events queued since the last read dirtied; [] after
        ``timeout`` seconds without any. Raises FeedGap when the kernel dropped events."""
        if not self._poll.poll(timeout * 1000):
            return []
        dirty: set[DirtyDir] = set()
        paths: dict[bytes, bytes | None] = {}  # handles resolved in this read
        linked: dict[tuple[bytes, bytes], bool] = {}  # names checked for hard links
        count = 0
        while count < _MAX_BATCH:
            try:
                buf = os.read(self.fd, _READ_SIZE)
            except BlockingIOError:
                break
            for mask, handle, name in _events(buf):
                count += 1
                if mask & FAN_Q_OVERFLOW:
                    self._note(count)
                    raise FeedGap("fanotify's queue overflowed: events were lost")
                if handle not in paths:
                    paths[handle] = self._below_root(handle)
                where = paths[handle]
                if where is None:
                    continue
                dirty.update(dirtied(where, mask, name))
                if mask & _REWRITTEN and not mask & FAN_ONDIR:
                    if (where, name) not in linked:
                        linked[where, name] = self._linked_elsewhere(where, name)
                    if linked[where, name]:
                        dirty.add(WHOLE_TREE)
        self._note(count)
        return sorted(dirty)

    def _note(self, count: int) -> None:
        self.events += count
        self._read_at = time.time_ns()

    def _below_root(self, handle: bytes) -> bytes | None:
        """The directory ``handle`` names, relative to the root; None: not below the root,
        or gone (a removed directory, whose removal dirtied its parent)."""
        fd = _libc.open_by_handle_at(self.root_fd, handle, os.O_PATH | os.O_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            if err in (errno.ESTALE, errno.ENOENT):
                return None
            raise FeedGap(f"a directory's handle did not open: {os.strerror(err)}")
        try:
            path = os.readlink(f"/proc/self/fd/{fd}".encode())
            here = os.fstat(fd)
        finally:
            os.close(fd)
        if path == self.root:
            return b""
        if not path.startswith(self.root.rstrip(b"/") + b"/"):
            return None
        try:  # the path read back still names that directory (not unlinked, " (deleted)")
            there = os.lstat(path)
        except OSError:
            return None
        if (there.st_dev, there.st_ino) != (here.st_dev, here.st_ino):
            return None  # moved since, and its move dirtied both of its parents
        return path[len(self.root.rstrip(b"/")) + 1:]

    def _linked_elsewhere(self, where: bytes, name: bytes) -> bool:
        """Whether entry ``name`` of directory ``where`` is a non-directory with names in
        other directories. Its copy is written anew and linked to its other names through the
        pass's staging directory (fsclone.fs.staging), which only knows the names the pass
        lists: one in a directory no event dirtied would keep the old copy. Nothing tells
        where they are (no parent pointers), so the whole tree is synced. Names gone by now
        dirtied their directories as they went."""
        folder = self.root if not where else self.root.rstrip(b"/") + b"/" + where
        try:
            st = os.lstat(folder + b"/" + name)
            if stat.S_ISDIR(st.st_mode) or st.st_nlink < 2:
                return False
            with os.scandir(folder) as entries:
                here = sum(1 for e in entries if e.inode() == st.st_ino)
        except OSError:
            return False
        return here < st.st_nlink

    def cursor(self) -> bytes:
        """The time of the last read (ns): fanotify replays nothing, so a restarted watcher
        starts from the pending store's set and the events from its own start on."""
        return str(self._read_at).encode()

    def commit(self, cursor: bytes) -> None:
        """Nothing to acknowledge: the kernel forgets an event once it is read."""

    def close(self) -> None:
        for fd in (self.fd, self.root_fd):
            if fd >= 0:
                os.close(fd)
        self.fd = self.root_fd = -1


def _events(buf: bytes) -> list[tuple[int, bytes, bytes]]:
    """Each event of a read: its mask, its directory's file handle (a struct file_handle, as
    open_by_handle_at takes it) and the entry's name (b"." for a directory's own event).
    An overflow has neither."""
    events = []
    off = 0
    while off + _METADATA.size <= len(buf):
        length, version, _, meta_len, mask, fd, _ = _METADATA.unpack_from(buf, off)
        if version != _METADATA_VERSION:
            raise FeedGap(f"fanotify event metadata version {version}, not "
                          f"{_METADATA_VERSION}")
        if fd >= 0:  # only with FAN_REPORT_FID off, never asked for here
            os.close(fd)
        handle = name = b""
        info = off + meta_len
        while info + _INFO_HEADER.size <= off + length:
            kind, _, info_len = _INFO_HEADER.unpack_from(buf, info)
            if kind == _INFO_DFID_NAME:
                at = info + _INFO_HEADER.size
                size = _HANDLE.unpack_from(buf, at)[0]
                handle = buf[at:at + _HANDLE.size + size]
                name = buf[at + _HANDLE.size + size:info + info_len].split(b"\0", 1)[0]
            info += info_len
        events.append((mask, handle, name))
        off += length
    return events


def dirtied(where: bytes, mask: int, name: bytes) -> list[DirtyDir]:
    """What one event in directory ``where`` (relative to the root) dirties: the directory
    (it gained, lost or holds a changed entry); a directory made or moved in, with all it
    holds; a directory's own change (name "."), the directory and, for its own metadata, its
    parent."""
    if name == b".":
        parent = [DirtyDir(where.rpartition(b"/")[0], False)] if where else []
        return [DirtyDir(where, False), *parent]
    if not name or b"/" in name or name == b"..":
        raise FeedGap(f"a fanotify event named no entry ({name!r})")
    if mask & FAN_ONDIR and mask & _NEW_HERE:
        return [DirtyDir(where, False), DirtyDir(where + b"/" + name if where else name, True)]
    return [DirtyDir(where, False)]
