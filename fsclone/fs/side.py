"""What the two sides of a copy share: a directory held by its fd for one chunk, and the reads
made of it the same way on either side, each OSError marked with its step and the side
(fs/steps.py). fs/source.py and fs/target.py build on it."""

from __future__ import annotations

import os
from typing import ClassVar

from fsclone.fs import meta
from fsclone.fs.steps import READ, STAT, mark

Xattrs = dict[str, bytes]


class DirSide:
    """A directory of one side, by its fd (owned by the caller)."""

    __slots__ = ("fd",)
    #: fsclone.fs.steps.SOURCE or TARGET: what the marks of this side's errors say
    SIDE: ClassVar[str]

    def __init__(self, fd: int) -> None:
        self.fd = fd

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
