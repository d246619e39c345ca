"""Setting layouts on a Lustre target: a new file's before its data, a directory's default only
where it has one of its own.

Lustre instantiates a file's layout at its first write-open, and a layout set after that is
silently not applied (the client swallows the EEXIST and returns 0, LU-9484). So a new file is
opened with ``O_LOV_DELAY_CREATE`` and given ``lustre.lov`` before any data. Lustre has no
``O_TMPFILE`` (LU-9512): this is always the temp-name path, one open and one setxattr.

A layout the target refuses (EINVAL: an older server without PFL or DoM; EOPNOTSUPP: not
Lustre) is not an item error: the file gets the target's default, the fallback is counted by
layout kind, and the refusal is learnt, so later files of that kind skip the attempt.
"""

from __future__ import annotations

import errno
import os
from collections import Counter
from collections.abc import Collection, Mapping
from typing import Protocol

from fsclone.errors import LayoutError
from fsclone.fs.lustre import read
from fsclone.fs.lustre.layout import LAYOUT_XATTR, decode, encode, kind, sanitize
from fsclone.fs.steps import SOURCE, TARGET, XATTR, mark

#: O_NOCTTY | O_ASYNC (0o20400 on x86_64): Lustre delays the layout only when both are set,
#: bits that mean nothing for a regular file anywhere else
O_LOV_DELAY_CREATE = os.O_NOCTTY | os.O_ASYNC
NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
#: setxattr errors meaning "this target takes no such layout", not "this file failed"
_REFUSED = {errno.EINVAL, errno.EOPNOTSUPP}


class LayoutOS(Protocol):
    """The OS calls the create path makes (the ``os`` module; a recording double in tests)."""

    def open(self, path: str, flags: int, mode: int = 0o777, *,
             dir_fd: int | None = None) -> int: ...

    def setxattr(self, path: int, attribute: str, value: bytes, flags: int = 0) -> None: ...

    def close(self, fd: int) -> None: ...

    def unlink(self, path: str, *, dir_fd: int | None = None) -> None: ...


class LustreCreate:
    """One worker's layout-preserving creates on one target, with what it learnt of refusals.
    ``pool_map`` and ``target_pools`` as for :func:`fsclone.fs.lustre.layout.map_pool`."""

    def __init__(self, pool_map: Mapping[str, str] | None = None,
                 target_pools: Collection[str] | None = None, osapi: LayoutOS = os) -> None:
        self.pool_map = dict(pool_map or {})
        self.target_pools = target_pools
        self.os = osapi
        #: files (and directories) left with the target's default layout, per layout kind,
        #: since the caller last took them (:meth:`take_fallbacks`)
        self.fallbacks: Counter[str] = Counter()
        self._refused: set[str] = set()  # kinds this target refuses
        self._off = False  # whether the target takes no layouts at all (not Lustre)

    def create(self, dir_fd: int, name: str, mode: int, source_layout: bytes | None) -> int:
        """Create ``name`` in ``dir_fd`` (O_EXCL, never following a symlink) for writing, with
        the source's layout (the ``lustre.lov`` value, None: none) re-used; returns its fd.
        On an error other than a refusal the new file is removed again."""
        request = self._request(source_layout)
        if request is None:
            return self.os.open(name, NEW_FILE, mode, dir_fd=dir_fd)
        lkind, value = request
        fd = self.os.open(name, NEW_FILE | O_LOV_DELAY_CREATE, mode, dir_fd=dir_fd)
        try:
            try:
                self.os.setxattr(fd, LAYOUT_XATTR, value)
                return fd
            except OSError as exc:
                if exc.errno not in _REFUSED:
                    raise
                self._refuse(lkind, exc.errno)
            # still without a layout: a plain write-open of the same inode gives it the default
            plain = self.os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_CLOEXEC)
        except BaseException:
            self.os.close(fd)
            self.os.unlink(name, dir_fd=dir_fd)
            raise
        self.os.close(fd)
        return plain

    def set_dir_default(self, fd: int, value: bytes) -> None:
        """Give the directory ``fd`` the default layout ``value`` (from
        :func:`dir_default_change`; b"" removes its own); a refusal is counted, not raised."""
        lkind = "remove" if not value else kind(decode(value))
        if self._learnt(lkind):
            return
        try:
            self.os.setxattr(fd, LAYOUT_XATTR, value)
        except OSError as exc:
            if exc.errno not in _REFUSED:
                mark(exc, XATTR, TARGET)
                raise
            self._refuse(lkind, exc.errno)

    def copy_dir_default(self, sfd: int, dfd: int) -> bool:
        """Give the target directory ``dfd`` the default layout the source directory ``sfd``
        has of its own, or take away one of its own the source lacks (see
        :func:`dir_default_change`); returns whether it set one. Four xattr reads: each
        directory's and its parent's."""
        source = own_default(read.dir_default(sfd, SOURCE), read.parent_default(sfd, SOURCE))
        target = own_default(read.dir_default(dfd, TARGET), read.parent_default(dfd, TARGET))
        try:
            change = dir_default_change(source, target, self.pool_map, self.target_pools)
        except LayoutError:
            self.fallbacks["unreadable"] += 1
            return False
        if change is None:
            return False
        self.set_dir_default(dfd, change)
        return True

    def take_fallbacks(self) -> Counter[str]:
        """The fallbacks counted since the last call (a chunk's, for its result)."""
        taken, self.fallbacks = self.fallbacks, Counter()
        return taken

    def _request(self, blob: bytes | None) -> tuple[str, bytes] | None:
        """(kind, sanitized value) to set, or None: create with the target's default."""
        if blob is None:
            return None
        lkind = "unreadable"
        try:
            layout = decode(blob)
            lkind = kind(layout)
            if self._learnt(lkind):
                return None
            return lkind, encode(sanitize(layout, self.pool_map, self.target_pools))
        except LayoutError:
            self.fallbacks[lkind] += 1
            return None

    def _learnt(self, lkind: str) -> bool:
        """Whether the target is known to refuse ``lkind``; counts the file's fallback."""
        refused = self._off or lkind in self._refused
        if refused:
            self.fallbacks[lkind] += 1
        return refused

    def _refuse(self, lkind: str, err: int) -> None:
        """Learn that the target refuses ``lkind`` (EOPNOTSUPP: every layout)."""
        self._refused.add(lkind)
        self._off = self._off or err == errno.EOPNOTSUPP
        self.fallbacks[lkind] += 1


def own_default(layout: bytes | None, parent_layout: bytes | None) -> bytes | None:
    """A directory's own default layout, or None where it only shows its parent's: a Lustre
    directory without one reports its filesystem root's default (since 2.14, LU-11656), and
    copying that would pin the root's default, pool and all, on every target directory. For a
    pass root, ``parent_layout`` is its filesystem root's."""
    if layout is None or (parent_layout is not None and _same(layout, parent_layout)):
        return None
    return layout


def dir_default_change(source_own: bytes | None, target_own: bytes | None,
                       pool_map: Mapping[str, str] | None = None,
                       target_pools: Collection[str] | None = None) -> bytes | None:
    """What a target directory's default layout needs, given both sides' own defaults (see
    :func:`own_default`): None nothing, b"" removing its own, else the value to set."""
    if source_own is None:
        return None if target_own is None else b""
    want = encode(sanitize(decode(source_own), pool_map, target_pools))
    if target_own is not None and _request_of(target_own) == want:
        return None
    return want


def _same(a: bytes, b: bytes) -> bool:
    """Whether two layouts ask for the same (generations, objects and offsets aside)."""
    try:
        return _request_of(a) == _request_of(b)
    except LayoutError:
        return a == b


def _request_of(blob: bytes) -> bytes:
    return encode(sanitize(decode(blob)))
