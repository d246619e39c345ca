"""The pending store of change-driven sync: per pair of roots, what changed in SRC that DST may
not have yet, and whether that record can be trusted (one SQLite file per pair).

A watcher records each batch of dirty directories with its feed's cursor in one transaction,
flushed to disk (``synchronous=FULL``) before it commits the cursor to the feed: a crash then
replays what was recorded, never loses it. A ``--changes`` pass (or the watcher's own run)
takes the pending set, and removes what it took only once it completed; a directory dirtied
again meanwhile is recorded anew and stays.

The record is trustworthy when it tells everything that changed since a complete ``pass sync``:
the feed ran without a gap from before that sync started until now. So it keeps when the feed's
unbroken run began (``watch_since``; a gap or a watcher start that cannot replay begins a new
one) and when the last complete ``pass sync`` started (``synced_at``). One watcher per pair
holds the pair's lock (a flock) for its life, which also tells whether it is running now.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from fsclone.changes.feed import DirtyDir, checked
from fsclone.errors import LockedError
from fsclone.pathkey import path_key
from fsclone.state.directory import create_private, private_subdir

SCHEMA = """
CREATE TABLE IF NOT EXISTS pair (src BLOB, dst BLOB, feed TEXT, cursor BLOB,
    watch_since REAL, synced_at REAL, gap TEXT, gap_at REAL);
CREATE TABLE IF NOT EXISTS pending (path BLOB PRIMARY KEY, recursive INTEGER, taken TEXT);
"""


@dataclass(frozen=True)
class Trust:
    """Whether a ``--changes`` pass may run on the record, and if not, why (one line)."""

    ok: bool
    why: str = ""


def _key(src: str, dst: str) -> str:
    return path_key(f"{src}\0{dst}")


def store_path(state_dir: Path, src: str, dst: str) -> Path:
    """Where the pending store of the pair (resolved roots) lives."""
    return state_dir / "changes" / f"{_key(src, dst)}.db"


class ChangeStore:
    """The pending store of one pair of roots, open."""

    def __init__(self, path: Path, src: str, dst: str) -> None:
        self.path = path
        self.src, self.dst = src, dst
        private_subdir(path.parent)
        os.close(create_private(path))  # 0600 before SQLite writes a byte of it
        self.db = sqlite3.connect(path, isolation_level="DEFERRED", timeout=30)
        self.db.executescript("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;" + SCHEMA)
        if self.db.execute("SELECT count(*) FROM pair").fetchone()[0] == 0:
            self.db.execute("INSERT INTO pair (src, dst, cursor) VALUES (?,?,?)",
                            (os.fsencode(src), os.fsencode(dst), b""))
            self.db.commit()
        self._lock_fd: int | None = None

    @classmethod
    def open(cls, state_dir: Path, src: str, dst: str) -> ChangeStore:
        """The pair's store, made if new (a watcher's)."""
        return cls(store_path(state_dir, src, dst), src, dst)

    @classmethod
    def find(cls, state_dir: Path, src: str, dst: str) -> ChangeStore | None:
        """The pair's store if one was ever made (no watcher ran: None)."""
        path = store_path(state_dir, src, dst)
        return cls(path, src, dst) if path.is_file() else None

    # -- the watcher's lock -----------------------------------------------------------------
    def _lock_path(self) -> Path:
        return self.path.with_suffix(".lock")

    def hold(self, what: str) -> None:
        """Take the pair's watcher lock for this process's life, or raise LockedError naming
        its holder; ``what`` names us to others."""
        fd = create_private(self._lock_path())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip()
            os.close(fd)
            raise LockedError(f"a watcher is running on {self.src} -> {self.dst} "
                              f"({holder})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{what}, pid {os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def watched(self) -> bool:
        """Whether a watcher (this process or another) holds the pair's lock now."""
        if self._lock_fd is not None:
            return True
        try:
            fd = os.open(self._lock_path(), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    # -- what the feed writes ---------------------------------------------------------------
    def feed_started(self, feed: str, resumed: bool) -> None:
        """A feed of kind ``feed`` starts. ``resumed``: it replays from the stored cursor, so
        nothing was lost while it was down and its unbroken run goes on; else (fanotify sees
        nothing while no watcher runs) a new run begins now."""
        self.db.execute("UPDATE pair SET feed=?", (feed,))
        if not resumed:
            self.db.execute("UPDATE pair SET watch_since=?, cursor=?", (time.time(), b""))
        else:
            self.db.execute("UPDATE pair SET watch_since=coalesce(watch_since, ?)",
                            (time.time(),))
        self.db.commit()

    def record(self, dirs: Iterable[DirtyDir], cursor: bytes) -> None:
        """Add dirty directories (each path checked) and the feed's cursor after them, in one
        transaction on disk when this returns: only then may the feed commit the cursor. A
        directory recorded again is pending anew, even if a running pass took it."""
        rows = [(d.path, int(d.recursive)) for d in checked(list(dirs))]
        with self.db:
            self.db.executemany(
                "INSERT INTO pending (path, recursive, taken) VALUES (?,?,NULL) "
                "ON CONFLICT(path) DO UPDATE SET recursive=max(recursive, excluded.recursive), "
                "taken=NULL", rows)
            self.db.execute("UPDATE pair SET cursor=?", (cursor,))

    def cursor(self) -> bytes:
        """The feed's cursor as last recorded (b"": none)."""
        return bytes(self.db.execute("SELECT cursor FROM pair").fetchone()[0] or b"")

    def gap(self, why: str) -> None:
        """Events were lost (a FeedGap): the record is untrustworthy until a full ``pass sync``
        that starts after the feed's next unbroken run began completes."""
        now = time.time()
        with self.db:
            self.db.execute("UPDATE pair SET watch_since=NULL, gap=?, gap_at=?", (why, now))

    def synced(self, started: float) -> None:
        """A complete ``pass sync`` that started at ``started`` (after which the feed recorded
        every change, if it ran): DST held everything the record does not."""
        with self.db:
            self.db.execute("UPDATE pair SET synced_at=max(coalesce(synced_at, 0), ?)",
                            (started,))

    # -- what a pass reads ------------------------------------------------------------------
    def trust(self, replayable: bool) -> Trust:
        """Whether the record tells every change since the last complete ``pass sync``.
        ``replayable``: the feed can catch up from its cursor (changelogs), so it need not be
        running now; else a watcher must hold the pair."""
        feed, since, synced, gap = self.db.execute(
            "SELECT feed, watch_since, synced_at, gap FROM pair").fetchone()
        if since is None:
            if gap:
                return Trust(False, f"events were lost ({gap}): run a full pass sync")
            return Trust(False, "no watcher has recorded changes on these roots")
        if synced is None or synced < since:
            return Trust(False, "no complete pass sync since the watcher started recording "
                                f"({_when(since)})")
        if not replayable and not self.watched():
            return Trust(False, f"the {feed or 'change'} watcher on these roots is not "
                                "running: changes since it stopped are unknown")
        return Trust(True)

    def feed(self) -> str:
        """The kind of the feed that records here ("" before any)."""
        return str(self.db.execute("SELECT feed FROM pair").fetchone()[0] or "")

    def pending(self) -> list[DirtyDir]:
        """Every pending directory, by path."""
        return [DirtyDir(bytes(p), bool(r)) for p, r in
                self.db.execute("SELECT path, recursive FROM pending ORDER BY path")]

    def take(self, pass_id: str) -> list[DirtyDir]:
        """The pending set, marked taken by pass ``pass_id`` (what a pass that died took is
        taken again)."""
        with self.db:
            self.db.execute("UPDATE pending SET taken=?", (pass_id,))
            return [DirtyDir(bytes(p), bool(r)) for p, r in self.db.execute(
                "SELECT path, recursive FROM pending WHERE taken=? ORDER BY path", (pass_id,))]

    def applied(self, pass_id: str) -> int:
        """Pass ``pass_id`` completed: what it took is on DST. Returns how many went."""
        with self.db:
            return self.db.execute("DELETE FROM pending WHERE taken=?", (pass_id,)).rowcount

    def close(self) -> None:
        self.db.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))
