"""New files that have no name until they are complete: ``O_TMPFILE``, then ``linkat``.

Nothing half-written is ever visible, a killed worker leaves nothing behind to clean up, and a
new file costs neither the lookup and create of a temp name nor a rename (about 2 µs a file on
tmpfs). Filesystems without ``O_TMPFILE`` (Lustre, NFS, most FUSE) are known from the pass's
profile (fsclone.fs.profile), and a refusal all the same (a directory of the target on another
filesystem, a site's PROFILE that was wrong) is learnt at the first try; callers then fall back
to a temp name and rename.
"""

from __future__ import annotations

import errno
import os
from typing import Any

#: open() errors meaning "no O_TMPFILE on this filesystem (or kernel)"
_UNSUPPORTED = {errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL}
_AT_EMPTY_PATH = 0x1000


class UnnamedFiles:
    """One worker's way to make unnamed files in one target tree: ``supported``, as its
    profile says, until a refusal says otherwise."""

    def __init__(self, supported: bool = True) -> None:
        self.supported = supported and hasattr(os, "O_TMPFILE")
        self._linkat: Any = None  # libc's linkat, loaded on first use (ctypes costs ~4 ms)
        self._get_errno: Any = None
        self._empty_path = True  # linkat(fd, "") needs CAP_DAC_READ_SEARCH; else via /proc

    def open(self, dir_fd: int, mode: int) -> int | None:
        """An unnamed file for writing in ``dir_fd`` (``mode``: nobody can open it by name
        before it is complete anyway); None where unsupported."""
        if not self.supported:
            return None
        try:
            return os.open(".", os.O_WRONLY | os.O_TMPFILE | os.O_CLOEXEC, mode, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno not in _UNSUPPORTED:
                raise
            self.supported = False
            return None

    def link(self, fd: int, dir_fd: int, name: str) -> None:
        """Give the unnamed file ``fd`` the name ``name`` in ``dir_fd``; FileExistsError when
        the name is taken (linkat never replaces)."""
        if self._empty_path:
            if self._linkat is None:
                import ctypes

                self._linkat = ctypes.CDLL(None, use_errno=True).linkat
                self._get_errno = ctypes.get_errno
            if self._linkat(fd, b"", dir_fd, os.fsencode(name), _AT_EMPTY_PATH) == 0:
                return
            err = self._get_errno()
            if err != errno.ENOENT:
                raise OSError(err, os.strerror(err), name)
        # without the capability the kernel answers ENOENT; /proc's magic link needs none
        os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=dir_fd, follow_symlinks=True)
        self._empty_path = False
