"""One source directory, for one chunk: every read a copy makes of the source.

The source is read-only to fsclone: entries are looked up and opened relative to the
directory's fd, never following a symlink, atimes untouched (fs/dirs.py). Every OSError that
leaves here is marked with its step and SOURCE (fs/steps.py), so an item error says what failed.
"""

from __future__ import annotations

import os

from fsclone.fs import data, dirs, meta
from fsclone.fs.steps import COMPARE, LIST, OPEN, READ, SOURCE, STAT, TARGET, XATTR, mark

Xattrs = dict[str, bytes]


class SourceChanged(Exception):
    """The source file changed while it was copied: its copy must not be stamped as done."""


def changed(before: os.stat_result, after: os.stat_result) -> bool:
    """Whether ``after`` (an fstat taken after the copy) is another file, or the same one
    written since ``before`` (the listing's lstat)."""
    return (before.st_ino, before.st_size, before.st_mtime_ns, before.st_ctime_ns) != (
        after.st_ino, after.st_size, after.st_mtime_ns, after.st_ctime_ns)


class SourceDir:
    """A source directory held by its fd (owned by the caller) for one chunk."""

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def entries(self) -> list[tuple[str, os.stat_result]]:
        """Every entry with its lstat (a complete listing, or an error: see dirs.list_dir)."""
        try:
            return dirs.list_dir(self.fd)
        except OSError as exc:
            mark(exc, LIST, SOURCE)
            raise

    def lookup(self, name: str) -> os.stat_result | None:
        """The entry's lstat, None when there is none."""
        try:
            return os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        except OSError as exc:
            mark(exc, STAT, SOURCE)
            raise

    def lstat(self, name: str) -> os.stat_result:
        """The entry's lstat; FileNotFoundError when it is gone."""
        try:
            return os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except OSError as exc:
            mark(exc, STAT, SOURCE)
            raise

    def open_file(self, name: str) -> int:
        """A regular file, opened for reading (see dirs.open_file)."""
        try:
            return dirs.open_file(name, self.fd)
        except OSError as exc:
            mark(exc, OPEN, SOURCE)
            raise

    def readlink(self, name: str) -> str:
        try:
            return os.readlink(name, dir_fd=self.fd)
        except OSError as exc:
            mark(exc, READ, SOURCE)
            raise

    def xattrs(self, name: str) -> Xattrs:
        try:
            return meta.read_xattrs(name, self.fd)
        except OSError as exc:
            mark(exc, XATTR, SOURCE)
            raise

    def xattrs_of(self, names: list[str]) -> list[Xattrs | OSError]:
        """The xattrs of many names (meta.read_xattrs_of), each error marked, for the caller
        to list."""
        return marked(meta.read_xattrs_of(names, self.fd), SOURCE)

    def same_bytes(self, name: str, target_fd: int, size: int) -> bool:
        """Whether the file ``name`` holds the same ``size`` bytes here and in the target
        directory ``target_fd`` (xxh3-128 of both sides: ``--checksum``)."""
        src = self.open_file(name)
        try:
            try:
                dst = dirs.open_file(name, target_fd)
            except OSError as exc:
                mark(exc, OPEN, TARGET)
                raise
            try:
                return _digest(src, size, SOURCE) == _digest(dst, size, TARGET)
            finally:
                os.close(dst)
        finally:
            os.close(src)


def _digest(fd: int, size: int, side: str) -> bytes:
    try:
        return data.hash_range(fd, 0, size)[0]
    except OSError as exc:
        mark(exc, COMPARE, side)
        raise


def marked(values: list[Xattrs | OSError], side: str) -> list[Xattrs | OSError]:
    """``values`` (of meta.read_xattrs_of), each OSError in it marked as an xattr read."""
    if not _ALL_READ.issuperset(map(type, values)):  # one C-level pass while none failed
        for value in values:
            if isinstance(value, OSError):
                mark(value, XATTR, side)
    return values


_ALL_READ = frozenset({dict})
