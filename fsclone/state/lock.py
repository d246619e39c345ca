"""One pass at a time per target: a flock on the target root and a record lock in the state
directory that names its holder."""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

from fsclone.errors import LockedError
from fsclone.pathkey import path_key
from fsclone.state.directory import create_private, private_subdir


class TargetLock:
    """One pass at a time per target, held for the life of the coordinator, in two places.

    On the target itself: ``flock`` on the target root's directory fd. It names nothing in the
    target and writes nothing there (a dry run takes it shared), and it holds whatever state
    directory each pass uses. In the state directory: a POSIX record lock on a file named
    after the target's path, which names its holder for the refusal. The kernel drops both
    when the coordinator dies; forked workers close their copies (see :func:`_close_in_child`),
    so a worker never holds the target for a dead coordinator."""

    def __init__(self, state_dir: Path, dst: str, shared: bool = False) -> None:
        self.path = private_subdir(state_dir / "locks") / (path_key(dst) + ".lock")
        self.fd = create_private(self.path)
        self.dst = dst
        self.shared = shared
        self.root_fd: int | None = None

    def acquire(self, what: str) -> None:
        """Take the lock or raise LockedError naming its holder; ``what`` names us to others."""
        try:
            fcntl.lockf(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(self.fd, 4096, 0).decode(errors="replace").strip()
            raise LockedError(f"another pass is running on this target ({holder})") from None
        self.describe(what)

    def hold_target(self) -> None:
        """Then flock the target root, once it exists (absent: a dry run ahead of the first
        copy has nothing to lock), before the pass record is made. A filesystem that cannot
        flock a directory is left to the state-dir lock."""
        try:
            fd = os.open(self.dst, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LockedError(f"another pass is running on target {self.dst} "
                              f"({_flock_holder(self.dst)}; its state directory is another "
                              "one)") from None
        except OSError:  # ENOLCK, EBADF, ENOSYS...: no flock of directories here
            os.close(fd)
            return
        self.root_fd = fd
        _HELD.add(fd)

    def describe(self, what: str) -> None:
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{what}, pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)

    def release(self) -> None:
        if self.root_fd is not None:
            _HELD.discard(self.root_fd)
            os.close(self.root_fd)
        os.close(self.fd)


#: the target roots this process holds flocked, closed in forked children
_HELD: set[int] = set()


def _close_in_child() -> None:
    """A flock belongs to the open file, which fork shares: a child closes its copy, so the
    lock goes with the coordinator alone."""
    for fd in _HELD:
        os.close(fd)
    _HELD.clear()


os.register_at_fork(after_in_child=_close_in_child)


def _flock_holder(path: str) -> str:
    """Who holds a flock on ``path``, as /proc/locks tells (on this host only)."""
    inode = str(os.stat(path).st_ino)
    try:
        with open("/proc/locks") as locks:  # "1: FLOCK  ADVISORY  WRITE 15128 fe:00:2621545 0 EOF"
            for line in locks:
                fields = line.split()
                if len(fields) > 5 and fields[1] == "FLOCK" and \
                        fields[5].rsplit(":", 1)[-1] == inode:
                    return f"pid {fields[4]} on this host"
    except OSError:
        pass
    return "held from another host"
