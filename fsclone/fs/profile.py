"""What the target filesystem can hold, found by probes fsclone makes itself, never guessed
from names: a probe writes only to an unnamed file (or a temp name of the pass, removed at
once) in the target root."""

from __future__ import annotations

import contextlib
import os

from fsclone.fs.unnamed import UnnamedFiles

#: seconds far outside any filesystem's range (year ~36800 either side of 1970): the kernel
#: stores the nearest time the filesystem can hold, and that is its limit
_FAR = float(2**40)


def time_limits(root_fd: int, unnamed: UnnamedFiles,
                temp: str) -> tuple[int | None, int | None]:
    """The earliest and latest times (ns) files on the filesystem of ``root_fd`` can hold,
    None where the probe saw no limit. ``temp`` is a name to probe with where the filesystem
    has no unnamed files."""
    fd = unnamed.open(root_fd, 0o600)
    named = fd is None
    if fd is None:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=root_fd)
    try:
        return _stored(fd, -_FAR), _stored(fd, _FAR)
    finally:
        os.close(fd)
        if named:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp, dir_fd=root_fd)


def _stored(fd: int, seconds: float) -> int | None:
    """The mtime the filesystem keeps when asked for ``seconds``; None when it kept it."""
    os.utime(fd, (seconds, seconds))
    kept = os.fstat(fd).st_mtime_ns
    return None if kept == int(seconds) * 10**9 else kept
