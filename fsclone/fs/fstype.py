"""Which filesystem a descriptor lives on, from ``fstatfs``'s f_type (the superblock magic),
never guessed from mount paths or names."""

from __future__ import annotations

import ctypes
import os
from typing import Any

#: f_type → kind; 0xEF53 is shared by ext2, ext3 and ext4
KINDS = {
    0x0BD00BD0: "lustre",
    0x47504653: "gpfs",
    0x6969: "nfs",
    0x58465342: "xfs",
    0xEF53: "ext4",
    0x9123683E: "btrfs",
    0x01021994: "tmpfs",
    0x65735546: "fuse",
}
_STATFS_SIZE = 256  # room for any libc's struct statfs (120 bytes on 64-bit Linux)
_fstatfs: Any = None  # libc's, loaded on first use (ctypes costs milliseconds)


def kind_of(f_type: int) -> str:
    """The kind for a statfs magic; "other" for filesystems fsclone has no rules for."""
    return KINDS.get(f_type & 0xFFFFFFFF, "other")


def fs_magic(fd: int) -> int:
    """The f_type of the filesystem holding ``fd`` (Python's os has no statfs with it)."""
    global _fstatfs
    if _fstatfs is None:
        _fstatfs = ctypes.CDLL(None, use_errno=True).fstatfs
    buf = ctypes.create_string_buffer(_STATFS_SIZE)
    if _fstatfs(fd, buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ctypes.c_long.from_buffer(buf).value  # f_type, a long, comes first


def fs_kind(fd: int) -> str:
    """The kind of filesystem holding ``fd``: lustre, gpfs, nfs, xfs, ext4, btrfs, tmpfs, fuse,
    other."""
    return kind_of(fs_magic(fd))
