"""Trees for the tests that look at, kill or interrupt a pass mid-way, and a way to make sure
the pass is still mid-way when they do, however fast the machine.

A pass on a few thousand small files ends in a fraction of a second. A test that waits for
"some progress" and then acts races the pass to its end. Holding a lease on one source file
takes the race away: the worker that opens the file waits until the test lets go, so the pass
cannot end before then, while the other workers go on with the rest of the tree.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
from collections.abc import Iterator
from pathlib import Path

#: how long the kernel lets a lease holder keep an opener waiting (fs.lease-break-time)
_LEASE_BREAK_TIME = Path("/proc/sys/fs/lease-break-time")


def many_files(root: Path, dirs: int = 40, files: int = 60, size: int = 48 << 10) -> Path:
    """``dirs`` directories of ``files`` files of up to ``size`` bytes each."""
    block = os.urandom(size)
    for d in range(dirs):
        sub = root / f"d{d:03}"
        sub.mkdir(parents=True)
        for f in range(files):
            (sub / f"f{f:03}").write_bytes(block[f:])
    return root


class Lease:
    """A write lease the test holds on a file (see :func:`held`)."""

    def __init__(self, fd: int) -> None:
        self.inode = str(os.fstat(fd).st_ino)

    def breaking(self) -> bool:
        """Whether someone's open was refused and the kernel is recalling the lease."""
        with open("/proc/locks") as locks:  # "1: LEASE  BREAKING  READ 15128 fe:00:2621545 0 EOF"
            return any(f[1:3] == ["LEASE", "BREAKING"] and f[5].endswith(":" + self.inode)
                       for f in (line.split() for line in locks) if len(f) > 5)


@contextlib.contextmanager
def held(path: Path) -> Iterator[Lease]:
    """Hold a write lease on the regular file ``path``: whoever opens it waits until the
    context ends (or the kernel's lease-break-time runs out, 45 s by default). The lease only
    stalls opens; the test's own open reads nothing, so no atime moves."""
    limit = int(_LEASE_BREAK_TIME.read_text())
    assert limit >= 30, f"fs.lease-break-time is {limit} s: too short to hold a pass mid-way"
    # The kernel tells a lease holder of an opener with SIGIO, whose default action kills. A
    # handler, unlike SIG_IGN, is not inherited by the commands the test starts meanwhile.
    previous = signal.signal(signal.SIGIO, lambda *_: None)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOATIME)
        try:
            fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
            yield Lease(fd)
        finally:
            os.close(fd)  # closing the only descriptor lets go of the lease
    finally:
        signal.signal(signal.SIGIO, previous)
