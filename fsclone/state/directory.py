"""The state directory: private (0700, files 0600), one directory per pass named by its id."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from fsclone.chunk import new_id
from fsclone.errors import UsageError

#: the state directory and every directory and file fsclone makes in it: pass records hold the
#: roots, the options and the paths that failed, which are no business of other users
PRIVATE_DIR, PRIVATE_FILE = 0o700, 0o600


def open_state_dir(state_dir: Path) -> Path:
    """The state directory, made private (0700) if new. One that others could write into
    (not ours, or group or other may write) is refused: whoever can write there can forge the
    pass records a root pass resumes from, or take its lock. Read bits of an existing one are
    the site's choice (a group of admins may share it) and left alone."""
    state_dir.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    st = state_dir.stat()
    if st.st_uid != os.geteuid():
        raise UsageError(f"state directory {state_dir} belongs to uid {st.st_uid}, not to us: "
                         f"chown {os.geteuid()} {state_dir} (or use a STATE_DIR of our own)")
    if st.st_mode & 0o022:
        raise UsageError(f"state directory {state_dir} can be written by others: "
                         f"chmod go-w {state_dir}")
    return state_dir


def private_subdir(path: Path) -> Path:
    """A directory of the state directory's own (locks, trees), made 0700."""
    path.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    return path


def create_private(path: Path) -> int:
    """Create (or open) a file of the state directory 0600; returns its fd, for writing."""
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, PRIVATE_FILE)


def write_private_json(path: Path, value: object) -> None:
    """Replace ``path`` (a file of the state directory) with ``value`` as JSON (see
    :func:`write_private`)."""
    write_private(path, json.dumps(value).encode())


def write_private(path: Path, data: bytes) -> None:
    """Replace ``path`` (a file of the state directory, 0600 in a 0700 directory) with
    ``data``, complete or not at all: written to a temp name, then renamed."""
    private_subdir(path.parent)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    with open(create_private(tmp), "wb") as f:
        f.truncate()
        f.write(data)
    tmp.replace(path)


def new_pass_id(op: str) -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + f"-{op}-{new_id()[:6]}"


def op_of(pass_id: str) -> str:
    """The op a pass id names (see :func:`new_pass_id`); "" for a name that is not one."""
    parts = pass_id.rsplit("-", 2)
    return parts[1] if len(parts) == 3 else ""


def pass_dir(state_dir: Path, pass_id: str) -> Path:
    """The directory of pass ``pass_id``, refusing ids that are not one (a path, a dot name)."""
    path = state_dir / pass_id
    if "/" in pass_id or pass_id.startswith(".") or not (path / "pass.db").is_file():
        raise UsageError(f"no pass {pass_id} in {state_dir}")
    return path


def pass_ids(state_dir: Path) -> list[str]:
    """The ids of the passes recorded in ``state_dir``, oldest first (ids begin with the time)."""
    if not state_dir.is_dir():
        return []
    return sorted(p.name for p in state_dir.iterdir() if (p / "pass.db").is_file())
