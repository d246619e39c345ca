"""What a watcher (``fsclone watch``) tells ``fsclone status``.

``<state dir>/watch/<key of SRC and DST>.json``, rewritten whole (by rename) as it goes: the
roots, its pid and host, its state, the events it has read, the directories pending and when
the oldest of them was read, its last full sync and last gap. Only a status: the pending set
and the pair's lock are the pending store's (fsclone.state.changes).
"""

from __future__ import annotations

import json
import shutil
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from fsclone.pathkey import path_key
from fsclone.process import alive
from fsclone.state.directory import pass_dir, write_private_json

#: what a watcher is doing (its ``state``)
STARTING, FULL_SYNC, WATCHING, APPLYING, STOPPED = (
    "starting", "full sync", "watching", "applying", "stopped")


@dataclass
class WatchStatus:
    """What ``fsclone status`` shows of a watcher."""

    src: str
    dst: str
    pid: int = 0
    host: str = ""
    state: str = STARTING
    events: int = 0  # events read since the watcher started
    pending: int = 0  # directories pending
    oldest: float | None = None  # when the oldest pending change was read
    last_full_sync: float | None = None  # when the last full sync that completed started
    last_gap: str = ""  # the last gap, and when
    last_gap_at: float | None = None
    updated: float = 0.0

    def lag(self, now: float) -> float:
        """The oldest pending change's age: how far DST is behind SRC."""
        return 0.0 if self.oldest is None else max(0.0, now - self.oldest)

    def shown_state(self) -> str:
        """Its state, or that it died without a word (killed: its status says it runs)."""
        if self.state != STOPPED and self.host == socket.gethostname() and not alive(self.pid):
            return f"dead (pid {self.pid})"
        return self.state


def _status_path(state_dir: Path, src: str, dst: str) -> Path:
    return state_dir / "watch" / f"{path_key(src + chr(0) + dst)}.json"


def write_status(state_dir: Path, status: WatchStatus) -> None:
    status.updated = time.time()
    write_private_json(_status_path(state_dir, status.src, status.dst), asdict(status))


def read_status(state_dir: Path, src: str, dst: str) -> WatchStatus | None:
    """The last status of the watcher of ``src`` to ``dst``, if one ever ran."""
    return _read(_status_path(state_dir, src, dst))


def _read(path: Path) -> WatchStatus | None:
    try:
        return WatchStatus(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):  # none, or another version's: none until written
        return None


def read_statuses(state_dir: Path) -> list[WatchStatus]:
    """Every watcher's last status, by roots."""
    folder = state_dir / "watch"
    if not folder.is_dir():
        return []
    found = [s for s in map(_read, folder.glob("*.json")) if s is not None]
    return sorted(found, key=lambda s: (s.src, s.dst))


def forget_pass(state_dir: Path, pass_id: str) -> None:
    """Remove the record of a batch the watcher ran that left nothing to look at (done, no
    item failed, nothing changed while copied): a watcher runs one every few seconds, and
    ``fsclone status`` would list them by the thousand. Its counts went to the watcher's log."""
    shutil.rmtree(pass_dir(state_dir, pass_id))
