"""What the two sides of a copy share: a directory held by its fd for one chunk, and the reads
made of it the same way on either side, each OSError marked with its step and the side
(fs/steps.py). fs/source.py and fs/target.py build on it."""

from __future__ import annotations

import os
from typing import ClassVar

from fsclone.fs import meta
from fsclone.fs.inodeflags import Attrs, Side, open_checked
from fsclone.fs.steps import READ, STAT, mark

Xattrs = dict[str, bytes]


class DirSide:
    """A directory of one side, by its fd (owned by the caller), and what the side's
    filesystem holds of project IDs and flags (``flags``, one per worker: see
    fs.inodeflags.sides)."""

    __slots__ = ("fd", "flags")
    #: fsclone.fs.steps.SOURCE or TARGET: what the marks of this side's errors say
    SIDE: ClassVar[str]

    def __init__(self, fd: int, flags: Side) -> None:
        self.fd, self.flags = fd, flags

    def lookup(self, name: str) -> os.stat_result | None:
        """The entry's lstat, None when there is none."""
        try:
            return os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        except OSError as exc:
            mark(exc, STAT, self.SIDE)
            raise

    def readlink(self, name: str) -> str:
        try:
            return os.readlink(name, dir_fd=self.fd)
        except OSError as exc:
            mark(exc, READ, self.SIDE)
            raise

    def xattrs_of(self, names: list[str]) -> list[Xattrs | OSError]:
        """The xattrs of many names (meta.read_xattrs_of), each error in the list marked, for
        the caller to list."""
        return meta.read_xattrs_of(names, self.fd, side=self.SIDE)

    def xattrs(self, name: str) -> Xattrs:
        return meta.read_xattrs(name, self.fd, side=self.SIDE)

    def attrs(self, name: str, st: os.stat_result) -> Attrs:
        """The project ID and flags of the regular file or directory ``name`` (lstat ``st``),
        through a descriptor proved to be that inode."""
        try:
            return self.flags.read_at(name, self.fd, st)
        except OSError as exc:
            mark(exc, STAT, self.SIDE)
            raise

    def open_checked(self, name: str, st: os.stat_result) -> tuple[int, os.stat_result]:
        """The regular file or directory ``name``, opened for the ioctls and proved to be the
        inode ``st`` was taken of (inodeflags.open_checked), with its fstat."""
        try:
            return open_checked(name, self.fd, st)
        except OSError as exc:
            mark(exc, STAT, self.SIDE)
            raise
