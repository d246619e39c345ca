"""A lease on the target recorded in the target itself, for filesystems whose locks are not
shared between nodes (NFS, Lustre without ``-o flock``): an xattr on the target root naming
the holder (host, pid, pass) and the time of its last heartbeat.

A pass that writes takes the lease at start with an exclusive create of the xattr (the
filesystem arbitrates two nodes starting at once), refreshes it while it runs, and removes it
at the end. A lease whose heartbeat is older than :data:`EXPIRES` seconds, or held on this host
by a process that is gone, is stale and taken over. The xattr is fsclone's own: it is left out
of every xattr comparison (``fs.meta``), so it is never copied, reported or removed as a
difference.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import time
from typing import Any

from fsclone.errors import LockedError
from fsclone.process import alive

#: the xattr on the target root
LEASE_XATTR = "user.fsclone.lease"
#: seconds between heartbeats, and after the last one until a lease is stale (generous:
#: clocks of the nodes that compare them may differ)
BEAT_EVERY, EXPIRES = 20.0, 180.0
#: errors meaning "no user xattrs on this filesystem": no lease is held there
_UNSUPPORTED = {errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM, errno.EACCES}


class TargetLease:
    """The lease of one pass on one target root, held until :meth:`release`."""

    def __init__(self, dst: str, pass_id: str) -> None:
        self.dst = dst
        self.mine = {"host": socket.gethostname(), "pid": os.getpid(), "pass": pass_id}
        self.fd: int | None = None
        self.flocked = False
        self._next_beat = 0.0

    def take(self, flocked: bool) -> None:
        """Take the lease, or raise LockedError naming its live holder. ``flocked``: this
        process holds the target root's flock, so a lease of this host is a dead pass's (a
        live one would hold the flock), whatever its pid now names. Where the target keeps
        no user xattrs, nothing is held (the flock and the state-dir lock still are)."""
        self.flocked = flocked
        fd = os.open(self.dst, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            held = _read(fd)
            if held is not None:
                self._refuse_if_live(held)
                with contextlib.suppress(OSError):  # stale: another taker may beat us to it
                    os.removexattr(fd, LEASE_XATTR)
            os.setxattr(fd, LEASE_XATTR, self._value(), os.XATTR_CREATE)
        except FileExistsError:
            os.close(fd)
            raise LockedError(f"another pass took the lease on target {self.dst} at the same "
                              "moment") from None
        except OSError as exc:
            os.close(fd)
            if exc.errno in _UNSUPPORTED:
                return
            raise
        self.fd = fd
        self._next_beat = time.monotonic() + BEAT_EVERY

    def beat(self) -> None:
        """Refresh the heartbeat when it is due; raise LockedError if the lease was taken
        over (this pass stalled past its expiry), so the pass stops rather than race."""
        if self.fd is None or time.monotonic() < self._next_beat:
            return
        held = _read(self.fd)
        if held is not None and not self._is_mine(held):
            raise LockedError(f"the lease on target {self.dst} was taken over by "
                              f"{_who(held)}: this pass stops")
        os.setxattr(self.fd, LEASE_XATTR, self._value())
        self._next_beat = time.monotonic() + BEAT_EVERY

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            held = _read(self.fd)
            if held is not None and self._is_mine(held):
                os.removexattr(self.fd, LEASE_XATTR)
        os.close(self.fd)
        self.fd = None

    def _value(self) -> bytes:
        return json.dumps({**self.mine, "beat": time.time()}).encode()

    def _is_mine(self, held: dict[str, Any]) -> bool:
        return all(held.get(k) == v for k, v in self.mine.items())

    def _refuse_if_live(self, held: dict[str, Any]) -> None:
        beat = held.get("beat")
        age = time.time() - beat if isinstance(beat, (int, float)) else EXPIRES + 1
        if age > EXPIRES:
            return
        if held.get("host") == self.mine["host"] and (
                self.flocked or not alive(int(held.get("pid", 0)))):
            return
        raise LockedError(f"target {self.dst} is leased to {_who(held)}, heartbeat {age:.0f} s "
                          f"ago: another pass runs there (the lease expires {EXPIRES:.0f} s "
                          "after its last heartbeat)")


def _read(fd: int) -> dict[str, Any] | None:
    """The lease recorded on the target root, None when there is none; a garbled one reads
    as empty, a lease with no heartbeat: stale."""
    try:
        value = json.loads(os.getxattr(fd, LEASE_XATTR))
    except OSError as exc:
        if exc.errno in (errno.ENODATA, *_UNSUPPORTED):
            return None
        raise
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _who(held: dict[str, Any]) -> str:
    return f"pass {held.get('pass', '?')} on {held.get('host', '?')} (pid {held.get('pid', '?')})"
