"""What the target filesystem can hold, found by probes fsclone makes itself, never guessed
from names. A probe writes only to an unnamed file in the target root: nothing a user or a
directory's mtime could see."""

from __future__ import annotations

import os

from fsclone.fs.meta import TimeRule
from fsclone.fs.unnamed import UnnamedFiles

#: seconds far outside any filesystem's range (year ~36800 either side of 1970): the kernel
#: stores the nearest time the filesystem can hold, and that is its limit
_FAR = float(2**40)


#: a probe time with a digit in every decimal place of its nanoseconds (2009)
_PROBE_NS = 1_234_567_891_234_567_891
#: the time steps filesystems keep, finest first (ns, µs, ms, whole and FAT's two seconds)
_STEPS = (1, 10, 100, 1_000, 10_000, 100_000, 1_000_000, 10_000_000, 100_000_000,
          1_000_000_000, 2_000_000_000)


def probe_times(root_fd: int, unnamed: UnnamedFiles) -> TimeRule:
    """What times the filesystem of ``root_fd`` keeps (its range and step, as a TimeRule with
    no window): stamp an unnamed file and read back what it kept; nothing learnt where it
    has no unnamed files."""
    fd = unnamed.open(root_fd, 0o600)
    if fd is None:
        return TimeRule()
    try:
        os.utime(fd, ns=(_PROBE_NS, _PROBE_NS))
        kept = os.fstat(fd).st_mtime_ns
        step = next((s for s in _STEPS if kept == _PROBE_NS - _PROBE_NS % s), 1)
        return TimeRule.of(0, _stored(fd, -_FAR), _stored(fd, _FAR), step)
    finally:
        os.close(fd)


def _stored(fd: int, seconds: float) -> int | None:
    """The mtime the filesystem keeps when asked for ``seconds``; None when it kept it."""
    os.utime(fd, (seconds, seconds))
    kept = os.fstat(fd).st_mtime_ns
    return None if kept == int(seconds) * 10**9 else kept
