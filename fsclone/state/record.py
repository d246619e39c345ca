"""The durable record of a pass, as its coordinator writes it (one SQLite file per pass).

A record holds the spec, status, phase, counters, the chunks still outstanding (so a pass can be
resumed after any crash), the barriers, the planned deletions and the item errors. Every result
is applied in one transaction, and a transport acknowledges results only after that commit.
Reading a record without taking part in it is ``queries``'s job.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import closing
from dataclasses import replace
from pathlib import Path

from fsclone.chunk import Chunk, Group, ItemError, dumps, loads_chunk
from fsclone.errors import UsageError
from fsclone.fsprofile import Profiles
from fsclone.lifecycle import RUNNING
from fsclone.spec import PassSpec
from fsclone.state import released
from fsclone.state.directory import PRIVATE_DIR, create_private
from fsclone.state.tables import (
    SCHEMA,
    add_missing_columns,
    error_rows,
    redone_rows,
    skipped_rows,
    worker_rows,
)
from fsclone.stats import counters as C


class PassStore:
    """The record of one pass, open for the coordinator."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.db = sqlite3.connect(path / "pass.db", isolation_level="DEFERRED")
        self.db.executescript("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;" + SCHEMA)
        add_missing_columns(self.db)
        row = self.db.execute("SELECT spec, status, phase, counters FROM pass").fetchone()
        if row is None:
            raise UsageError(f"{path} holds no pass record")
        self.spec = PassSpec.from_wire(json.loads(row[0]))
        self.status: str = row[1]
        self.phase: int = row[2]
        self.counters: dict[str, int] = json.loads(row[3])
        self.outstanding: int = self.db.execute("SELECT count(*) FROM outstanding").fetchone()[0]
        #: the pass counters split by the worker that earned them (they sum to ``counters``),
        #: kept here so a resumed coordinator continues every worker's totals
        self.workers: dict[str, dict[str, int]] = worker_rows(self.db)
        self._dirty_workers: set[str] = set()
        #: the runs of the pass so far and the seconds they took (written at every commit,
        #: so a run that dies without a word counts to its last commit)
        runs, active = self.db.execute("SELECT runs, active FROM pass").fetchone()
        self.runs: int = runs or 0
        self.ran: float = active or 0.0  # the seconds of the runs before this one
        self._run_started: float | None = None
        self._run_ended: float | None = None  # set with the status it ends with
        # the record names the process running the pass (status tells a dead one by its pid)
        self.db.execute("UPDATE pass SET host=?, pid=?", (socket.gethostname(), os.getpid()))
        self.db.commit()

    def keep_profile(self, profile: Profiles) -> None:
        """Keep ``profile`` as the pass's (a resume found a side's filesystem changed)."""
        self.spec = replace(self.spec, profile=profile)
        self.db.execute("UPDATE pass SET spec=?", (json.dumps(self.spec.to_wire()),))
        self.db.commit()

    @classmethod
    def create(cls, state_dir: Path, spec: PassSpec) -> PassStore:
        path = state_dir / spec.id
        path.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=False)
        new = path / "pass.db.new"  # renamed once complete: readers never see a record without
        os.close(create_private(new))  # its pass row (``status`` while a pass starts); SQLite
        db = sqlite3.connect(new)  # gives its -wal and -shm files the database's mode
        db.executescript(SCHEMA)
        db.execute("INSERT INTO pass (id, spec, status, phase, started, ended, counters, host, "
                   "pid, runs, ran) VALUES (?,?,?,?,?,?,?,?,?,0,0)",
                   (spec.id, json.dumps(spec.to_wire()), RUNNING, 0, spec.started, None, "{}",
                    socket.gethostname(), os.getpid()))
        db.commit()
        db.close()
        new.rename(path / "pass.db")
        return cls(path)

    # -- chunks and barriers ------------------------------------------------------------------
    # Every add_* returns early when there is nothing to add: most results carry no errors,
    # deletions or children, and an empty executemany still costs a statement per result.
    def add_chunks(self, chunks: Iterable[Chunk]) -> None:
        rows = [(c.id, dumps(c)) for c in chunks]
        if not rows:
            return
        cur = self.db.executemany("INSERT OR IGNORE INTO outstanding VALUES (?,?)", rows)
        self.outstanding += cur.rowcount

    def replace_chunk(self, chunk: Chunk) -> None:
        """Store a chunk's next attempt in place of the current one."""
        self.db.execute("UPDATE outstanding SET body=? WHERE id=?", (dumps(chunk), chunk.id))

    def finish_chunk(self, chunk_id: str) -> bool:
        """Take a chunk out of the outstanding set; False when it was not in it (a duplicate
        result of a chunk already finished)."""
        if not self.db.execute("DELETE FROM outstanding WHERE id=?", (chunk_id,)).rowcount:
            return False
        self.outstanding -= 1
        return True

    def outstanding_chunks(self) -> Iterator[Chunk]:
        for (body,) in self.db.execute("SELECT body FROM outstanding").fetchall():
            yield loads_chunk(body)

    def add_group(self, group: Group) -> None:
        self.db.execute("INSERT OR IGNORE INTO groups VALUES (?,?,?,NULL)",
                        (group.id, group.size, dumps(group.then)))

    def fail_member(self, group_id: str, path: str) -> bool:
        """A member of a barrier failed at ``path``: the barrier's ``then`` chunk is released
        marked, so that what the members built (a large file's temp) is discarded, never
        published. Returns whether ``path`` is the barrier's first failure (the pieces of one
        file often fail alike, as every range after a target fills: it is listed once)."""
        row = self.db.execute("SELECT failed FROM groups WHERE id=?", (group_id,)).fetchone()
        if row is None or row[0] is not None:
            return row is None or os.fsdecode(row[0]) != path
        self.db.execute("UPDATE groups SET failed=? WHERE id=?", (os.fsencode(path), group_id))
        return True

    def complete_member(self, group_id: str) -> Chunk | None:
        """One member of a barrier is done; returns its ``then`` chunk when it was the last.
        A ``finalize`` (the one chunk that publishes what its members built) comes with
        ``members_failed`` in its args when any member failed (see :meth:`fail_member`); any
        other (a directory's times, an emptied directory's removal) runs as always."""
        self.db.execute("UPDATE groups SET remaining = remaining - 1 WHERE id=?", (group_id,))
        row = self.db.execute("SELECT remaining, then_chunk, failed FROM groups WHERE id=?",
                              (group_id,)).fetchone()
        if row is None or row[0] > 0:
            return None
        self.db.execute("DELETE FROM groups WHERE id=?", (group_id,))
        then = loads_chunk(row[1])
        if row[2] is None or then.op != "finalize":
            return then
        return replace(then, args={**then.args, "members_failed": True})

    # -- results ------------------------------------------------------------------------------
    def add_redone(self, path: str) -> None:
        """Remember that a redone chunk ran in directory ``path``: its earlier run may have
        left temp files there, which the pass removes once nothing of it runs any more."""
        self.db.execute("INSERT OR IGNORE INTO redone VALUES (?)", (os.fsencode(path),))

    def redone(self) -> list[str]:
        return redone_rows(self.db)

    def add_counters(self, delta: dict[str, int], worker: str) -> None:
        C.add(self.counters, delta)
        C.add(self.workers.setdefault(worker, {}), delta)
        self._dirty_workers.add(worker)

    def add_errors(self, errors: Iterable[ItemError]) -> None:
        rows = [(os.fsencode(e.path), e.op, e.errno, e.message, e.step, e.side) for e in errors]
        if rows:
            self.db.executemany("INSERT INTO errors (path, op, errno, message, step, side) "
                                "VALUES (?,?,?,?,?,?)", rows)

    def add_skipped(self, paths: Iterable[str]) -> None:
        rows = [(os.fsencode(p),) for p in paths]
        if rows:
            self.db.executemany("INSERT INTO skipped (path) VALUES (?)", rows)

    def skipped(self, limit: int | None = None) -> list[str]:
        return skipped_rows(self.db, limit)

    def add_released(self, paths: Iterable[str]) -> None:
        """HSM-released files left unread; a redone chunk's are there once."""
        rows = [(os.fsencode(p),) for p in paths]
        if rows:
            self.db.executemany("INSERT OR IGNORE INTO released VALUES (?)", rows)

    def write_released(self) -> Path | None:
        """Write every released file the pass left, over all its runs, sorted by path (as
        bytes), to the list file of its state directory (see :mod:`fsclone.state.released`);
        None when it left none."""
        rows = self.db.execute("SELECT path FROM released ORDER BY path").fetchall()
        if not rows:
            return None
        return released.write(self.path, [path for (path,) in rows])

    def add_deletions(self, deletions: Iterable[tuple[str, tuple[str, ...], int]]) -> None:
        rows = [(os.fsencode(d), json.dumps(list(n), ensure_ascii=True), c)
                for d, n, c in deletions]
        if rows:
            self.db.executemany("INSERT INTO deletions (path, names, entries) VALUES (?,?,?)",
                                rows)

    def planned_deletions(self) -> Iterator[tuple[str, list[str]]]:
        for path, names in self.db.execute("SELECT path, names FROM deletions ORDER BY seq"):
            yield os.fsdecode(path), json.loads(names)

    def planned_entries(self) -> int:
        return self.db.execute("SELECT coalesce(sum(entries), 0) FROM deletions").fetchone()[0]

    def errors_of(self, op: str) -> int:
        """How many item errors chunks of ``op`` listed."""
        return self.db.execute("SELECT count(*) FROM errors WHERE op=?", (op,)).fetchone()[0]

    def errors(self, limit: int | None = None) -> list[ItemError]:
        return error_rows(self.db, limit)

    # -- pass status --------------------------------------------------------------------------
    def set_phase(self, phase: int) -> None:
        self.phase = phase
        self.db.execute("UPDATE pass SET phase=?", (phase,))

    def set_status(self, status: str) -> None:
        self.status = status
        ended = time.time() if status != RUNNING else None
        self._run_ended = ended
        self.db.execute("UPDATE pass SET status=?, ended=?, host=?, pid=?",
                        (status, ended, socket.gethostname(), os.getpid()))
        self.commit()

    def begin_run(self) -> None:
        """A coordinator starts (or resumes) the pass: from now on its time counts."""
        self.runs += 1
        self._run_started = time.time()
        self.db.execute("UPDATE pass SET runs=?, ran=?, run_started=?",
                        (self.runs, self.ran, self._run_started))
        self.db.commit()

    @property
    def active(self) -> float:
        """Seconds the pass has run so far, over all its runs."""
        started = self._run_started
        if started is None:
            return self.ran
        return self.ran + (self._run_ended or time.time()) - started

    def commit(self) -> None:
        self.db.execute("UPDATE pass SET counters=?, active=?",
                        (json.dumps(self.counters), self.active))
        self.db.executemany("INSERT OR REPLACE INTO workers VALUES (?,?)",
                            [(w, json.dumps(self.workers[w])) for w in self._dirty_workers])
        self._dirty_workers.clear()
        self.db.commit()

    def close(self) -> None:
        self.db.close()


def mark(path: Path, status: str) -> None:
    """Set the status of a pass that is not running (one a new pass supersedes)."""
    with closing(sqlite3.connect(path / "pass.db")) as db:
        db.execute("UPDATE pass SET status=?, ended=?", (status, time.time()))
        db.commit()
