"""Naming the entries of a directory fd for the calls that take a path and no ``dir_fd``.

Python's xattr calls take no ``dir_fd``. A bare name relative to the cwd is as symlink-safe as
a ``dir_fd`` (the directory is the fd's, and the last component is never followed with
``follow_symlinks=False``), and it is the cheapest way by far. Reading the xattrs of a name on
tmpfs costs 2 us this way, 4.7 us as ``/proc/self/fd/<dirfd>/<name>``, 4 us through the
``*xattrat`` syscalls by ctypes (Linux 6.13 and later) and 7 us through an O_PATH descriptor per
entry; a no-op re-copy reads two names per entry, and the slower ways cost it 30 to 50%.

But the cwd is shared by all threads of a process, so each thread that steps into a directory
first takes a cwd of its own, ``unshare(CLONE_FS)`` (as virtiofsd's queue threads do for their
xattr calls): one thread's ``fchdir`` then never moves another's. The thread stops sharing its
umask and root too, which nothing in fsclone changes. Where the unshare is refused (a seccomp
filter in a container), a thread names entries as ``/proc/self/fd/<dirfd>/<name>`` instead:
slower, and just as safe.
"""

from __future__ import annotations

import ctypes
import os
import threading

#: unshare(2) flag: this thread stops sharing its cwd, root and umask with the others
_CLONE_FS = 0x200
_libc = ctypes.CDLL(None, use_errno=True)


class _Cwd(threading.local):
    """Whether this thread has a cwd of its own: None until it first asks."""

    own: bool | None = None


_cwd = _Cwd()


def names_in(dir_fd: int) -> str:
    """The prefix that makes an entry name of ``dir_fd`` a path naming it in this thread: ""
    once this thread's own cwd is that directory, else ``/proc/self/fd/<dir_fd>/``. Valid until
    this thread calls it again (and while ``dir_fd`` stays open)."""
    if _cwd.own is None:
        _cwd.own = _libc.unshare(_CLONE_FS) == 0
    if _cwd.own:
        os.fchdir(dir_fd)
        return ""
    return f"/proc/self/fd/{dir_fd}/"
