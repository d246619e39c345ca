"""Files that hold secrets (the broker password, the signing key): read only when no one but
their owner can read or write them."""

from __future__ import annotations

import os
import stat

from fsclone.errors import ConfigError


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
