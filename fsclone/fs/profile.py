"""What the target filesystem can hold, found by probes fsclone makes itself, never guessed
from names. A probe writes only to an unnamed file in the target root: nothing a user or a
directory's mtime could see."""

from __future__ import annotations

import os

from fsclone.fs.unnamed import UnnamedFiles

#: seconds far outside any filesystem's range (year ~36800 either side of 1970): the kernel
#: stores the nearest time the filesystem can hold, and that is its limit
_FAR = float(2**40)


def time_limits(root_fd: int, unnamed: UnnamedFiles) -> tuple[int | None, int | None]:
    """The earliest and latest times (ns) files on the filesystem of ``root_fd`` can hold,
    None where the probe saw no limit, or could not probe (no unnamed files there)."""
    fd = unnamed.open(root_fd, 0o600)
    if fd is None:
        return None, None
    try:
        return _stored(fd, -_FAR), _stored(fd, _FAR)
    finally:
        os.close(fd)


def _stored(fd: int, seconds: float) -> int | None:
    """The mtime the filesystem keeps when asked for ``seconds``; None when it kept it."""
    os.utime(fd, (seconds, seconds))
    kept = os.fstat(fd).st_mtime_ns
    return None if kept == int(seconds) * 10**9 else kept
