"""Files that hold secrets (the broker password, the signing key): read only when no one but
their owner can read or write them; and the log file, which names paths: appended to only when
it is a file of ours that others cannot write."""

from __future__ import annotations

import os
import stat

from fsclone.errors import ConfigError, UsageError


def read_private(path: str, what: str, missing: str) -> bytes:
    """The bytes of ``path``, refused unless it is a regular file that only its owner can read
    or write. ``what`` names it in errors ("password file"); ``missing`` says how to make one."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise ConfigError(f"{what} {path} is not a regular file")
            if st.st_mode & 0o077:
                raise ConfigError(f"{what} {path} is open to others (mode "
                                  f"{stat.S_IMODE(st.st_mode):04o}): chmod 600 {path}")
            return f.read()
    except FileNotFoundError:
        raise ConfigError(f"no {what} {path} ({missing})") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def append_private(path: str, what: str) -> int:
    """An fd appending to ``path``, made 0600 when missing. A root process must not be steered
    into another file by what a user can plant in a directory it may write to (a log in /tmp):
    a symlink as the last name is refused (O_NOFOLLOW), and so is anything but a regular file of
    ours with one link (a hard link to a root file) that others cannot write. The checks are
    on the opened file, so no swap can come between them and the writes."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC
    try:
        try:
            fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            fd = os.open(path, flags | os.O_NONBLOCK)  # a fifo planted there does not hang us
    except OSError as exc:
        raise UsageError(f"cannot open {what} {path}: {exc.strerror or exc}") from None
    st = os.fstat(fd)
    problem = ("is not a regular file" if not stat.S_ISREG(st.st_mode)
               else "is not ours" if st.st_uid != os.geteuid()
               else "has other names (hard links)" if st.st_nlink != 1
               else f"is open to others' writes (mode {stat.S_IMODE(st.st_mode):04o}): "
                    f"chmod go-w {path}" if st.st_mode & 0o022 else "")
    if problem:
        os.close(fd)
        raise UsageError(f"{what} {path} {problem}")
    os.set_blocking(fd, True)
    return fd
