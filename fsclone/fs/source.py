"""One source directory, for one chunk: every read a copy makes of the source.

The source is read-only to fsclone: entries are looked up and opened relative to the
directory's fd, never following a symlink, atimes untouched (fs/dirs.py). Every OSError that
leaves here is marked with its step and SOURCE (fs/steps.py), so an item error says what failed
(TARGET for the target half of a ``--checksum`` compare).
"""

from __future__ import annotations

import os

from fsclone.fs import data, dirs
from fsclone.fs.inodeflags import Attrs, Side
from fsclone.fs.side import DirSide
from fsclone.fs.steps import COMPARE, LIST, OPEN, SOURCE, STAT, TARGET, mark


class SourceChanged(Exception):
    """The source file changed while it was copied: its copy must not be stamped as done."""


def changed(before: os.stat_result, after: os.stat_result) -> bool:
    """Whether ``after`` (an fstat taken after the copy) is another file, or the same one
    written since ``before`` (the listing's lstat)."""
    return (before.st_ino, before.st_size, before.st_mtime_ns, before.st_ctime_ns) != (
        after.st_ino, after.st_size, after.st_mtime_ns, after.st_ctime_ns)


class SourceDir(DirSide):
    """A source directory held by its fd (owned by the caller) for one chunk."""

    __slots__ = ()
    SIDE = SOURCE

    def entries(self) -> list[os.DirEntry[str]]:
        """Every entry, by name and type (a complete listing, or an error: see
        dirs.list_dir)."""
        try:
            return dirs.list_dir(self.fd)
        except OSError as exc:
            mark(exc, LIST, SOURCE)
            raise

    @staticmethod
    def kinds(listed: list[os.DirEntry[str]]) -> dict[str, bool]:
        """Each listed name: whether it is a directory (dirs.kinds_of)."""
        try:
            return dirs.kinds_of(listed)
        except OSError as exc:
            mark(exc, LIST, SOURCE)
            raise

    @staticmethod
    def stat_listed(listed: list[os.DirEntry[str]],
                    ) -> tuple[list[tuple[str, os.stat_result]], list[tuple[str, OSError]]]:
        """The lstats of listed entries (through the listed directory's fd), those gone since
        the listing left out; and the entries whose lstat failed, each with its error."""
        found: list[tuple[str, os.stat_result]] = []
        failed: list[tuple[str, OSError]] = []
        for entry in listed:
            try:
                found.append((entry.name, entry.stat(follow_symlinks=False)))
            except FileNotFoundError:
                continue
            except OSError as exc:
                failed.append((entry.name, mark(exc, STAT, SOURCE)))
        return found, failed

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

    def same_bytes(self, name: str, target_fd: int, size: int, target: Side,
                   ) -> tuple[bool, tuple[Attrs, Attrs] | None]:
        """Whether the file ``name`` holds the same ``size`` bytes here and in the target
        directory ``target_fd`` (xxh3-128 of both sides: ``--checksum``), and both sides'
        project IDs and flags, read through the same fds (None: not carried; ``target``: the
        target's Side)."""
        src = self.open_file(name)
        try:
            try:
                dst = dirs.open_file(name, target_fd)
            except OSError as exc:
                mark(exc, OPEN, TARGET)
                raise
            try:
                attrs = (self.flags.read(src), target.read(dst)) if self.flags.any else None
                return _digest(src, size, SOURCE) == _digest(dst, size, TARGET), attrs
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
