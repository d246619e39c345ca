"""Durable pass records: one SQLite file per pass under the state directory.

A record holds the spec, status, phase, counters, the chunks still outstanding (so a pass can be
resumed after any crash), the barriers, the planned deletions and the item errors. Every result
is applied in one transaction, and a transport acknowledges results only after that commit.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass, replace
from pathlib import Path

from fsclone.chunk import Chunk, Group, ItemError, dumps, loads_chunk, new_id
from fsclone.errors import LockedError, UsageError
from fsclone.pathkey import path_key
from fsclone.spec import PassSpec
from fsclone.stats import counters as C

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pass (id TEXT PRIMARY KEY, spec TEXT, status TEXT, phase INTEGER,
    started REAL, ended REAL, counters TEXT, host TEXT, pid INTEGER);
CREATE TABLE IF NOT EXISTS outstanding (id TEXT PRIMARY KEY, body BLOB);
CREATE TABLE IF NOT EXISTS groups (id TEXT PRIMARY KEY, remaining INTEGER, then_chunk BLOB,
    failed BLOB);
CREATE TABLE IF NOT EXISTS errors (seq INTEGER PRIMARY KEY, path BLOB, op TEXT, errno INTEGER,
    message TEXT);
CREATE TABLE IF NOT EXISTS deletions (seq INTEGER PRIMARY KEY, path BLOB, names TEXT,
    entries INTEGER);
CREATE TABLE IF NOT EXISTS workers (name TEXT PRIMARY KEY, counters TEXT);
"""

RUNNING, DONE, INTERRUPTED, REFUSED, FAILED = "running", "done", "interrupted", "refused", "failed"
#: an unfinished pass a new pass on its target took the place of: never resumed
SUPERSEDED = "superseded"
#: the statuses of a pass that can be resumed
UNFINISHED = (RUNNING, INTERRUPTED)

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
    """Replace ``path`` (a file of the state directory, 0600 in a 0700 directory) with
    ``value`` as JSON, complete or not at all: written to a temp name, then renamed."""
    private_subdir(path.parent)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    with open(create_private(tmp), "w") as f:
        f.truncate()
        json.dump(value, f)
    tmp.replace(path)


def new_pass_id(op: str) -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + f"-{op}-{new_id()[:6]}"


def op_of(pass_id: str) -> str:
    """The op a pass id names (see :func:`new_pass_id`); "" for a name that is not one."""
    parts = pass_id.rsplit("-", 2)
    return parts[1] if len(parts) == 3 else ""


@dataclass(frozen=True)
class PassRecord:
    """What ``status`` shows about a pass, read without opening it for writing."""

    spec: PassSpec
    status: str
    phase: int
    started: float
    ended: float | None
    counters: dict[str, int]
    outstanding: int
    errors: int
    host: str
    pid: int


class PassStore:
    """The record of one pass, open for the coordinator."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.db = sqlite3.connect(path / "pass.db", isolation_level="DEFERRED")
        self.db.executescript("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;" + _SCHEMA)
        _add_missing_columns(self.db)
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
        self.workers: dict[str, dict[str, int]] = _workers(self.db)
        self._dirty_workers: set[str] = set()
        # the record names the process running the pass (status tells a dead one by its pid)
        self.db.execute("UPDATE pass SET host=?, pid=?", (socket.gethostname(), os.getpid()))
        self.db.commit()

    @classmethod
    def create(cls, state_dir: Path, spec: PassSpec) -> PassStore:
        path = state_dir / spec.id
        path.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=False)
        new = path / "pass.db.new"  # renamed once complete: readers never see a record without
        os.close(create_private(new))  # its pass row (``status`` while a pass starts); SQLite
        db = sqlite3.connect(new)  # gives its -wal and -shm files the database's mode
        db.executescript(_SCHEMA)
        db.execute("INSERT INTO pass VALUES (?,?,?,?,?,?,?,?,?)",
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
    def add_counters(self, delta: dict[str, int], worker: str) -> None:
        C.add(self.counters, delta)
        C.add(self.workers.setdefault(worker, {}), delta)
        self._dirty_workers.add(worker)

    def add_errors(self, errors: Iterable[ItemError]) -> None:
        rows = [(os.fsencode(e.path), e.op, e.errno, e.message) for e in errors]
        if rows:
            self.db.executemany("INSERT INTO errors (path, op, errno, message) VALUES (?,?,?,?)",
                                rows)

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
        return _errors(self.db, limit)

    # -- pass status --------------------------------------------------------------------------
    def set_phase(self, phase: int) -> None:
        self.phase = phase
        self.db.execute("UPDATE pass SET phase=?", (phase,))

    def set_status(self, status: str) -> None:
        self.status = status
        ended = time.time() if status != RUNNING else None
        self.db.execute("UPDATE pass SET status=?, ended=?, host=?, pid=?",
                        (status, ended, socket.gethostname(), os.getpid()))
        self.commit()

    def commit(self) -> None:
        self.db.execute("UPDATE pass SET counters=?", (json.dumps(self.counters),))
        self.db.executemany("INSERT OR REPLACE INTO workers VALUES (?,?)",
                            [(w, json.dumps(self.workers[w])) for w in self._dirty_workers])
        self._dirty_workers.clear()
        self.db.commit()

    def close(self) -> None:
        self.db.close()


def _add_missing_columns(db: sqlite3.Connection) -> None:
    """Bring a record written by an earlier version up to the schema (resumed across an
    upgrade): barriers learnt to remember a failed member."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(groups)")}
    if "failed" not in columns:
        db.execute("ALTER TABLE groups ADD COLUMN failed BLOB")
        db.commit()


def _errors(db: sqlite3.Connection, limit: int | None) -> list[ItemError]:
    sql = "SELECT path, op, errno, message FROM errors ORDER BY seq"
    rows = db.execute(sql + (f" LIMIT {int(limit)}" if limit else "")).fetchall()
    return [ItemError(os.fsdecode(p), o, e, m) for p, o, e, m in rows]


def _workers(db: sqlite3.Connection) -> dict[str, dict[str, int]]:
    try:
        rows = db.execute("SELECT name, counters FROM workers ORDER BY name").fetchall()
    except sqlite3.OperationalError:  # a record written before per-worker totals existed
        return {}
    return {name: json.loads(counters) for name, counters in rows}


def _read_only(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path / 'pass.db'}?mode=ro", uri=True)


def read_errors(path: Path, limit: int | None = None) -> list[ItemError]:
    """A pass's item errors, in the order they happened (for ``errors`` and ``--retry-errors``)."""
    with closing(_read_only(path)) as db:
        return _errors(db, limit)


def read_workers(path: Path) -> dict[str, dict[str, int]]:
    """A pass's counters per worker ("host.index"), for ``status ID``."""
    with closing(_read_only(path)) as db:
        return _workers(db)


def read_chunks(path: Path) -> list[Chunk]:
    """The chunks a pass still had to run: outstanding, and held back by barriers."""
    with closing(_read_only(path)) as db:
        rows = db.execute("SELECT body FROM outstanding UNION ALL "
                          "SELECT then_chunk FROM groups").fetchall()
    return [loads_chunk(body) for (body,) in rows]


def mark(path: Path, status: str) -> None:
    """Set the status of a pass that is not running (one a new pass supersedes)."""
    with closing(sqlite3.connect(path / "pass.db")) as db:
        db.execute("UPDATE pass SET status=?, ended=?", (status, time.time()))
        db.commit()


def pass_dir(state_dir: Path, pass_id: str) -> Path:
    """The directory of pass ``pass_id``, refusing ids that are not one (a path, a dot name)."""
    path = state_dir / pass_id
    if "/" in pass_id or pass_id.startswith(".") or not (path / "pass.db").is_file():
        raise UsageError(f"no pass {pass_id} in {state_dir}")
    return path


def read_record(path: Path) -> PassRecord:
    """Read a pass record without taking part in it (for status)."""
    with closing(_read_only(path)) as db:
        spec, status, phase, started, ended, counters, host, pid = db.execute(
            "SELECT spec, status, phase, started, ended, counters, host, pid FROM pass").fetchone()
        outstanding = db.execute("SELECT count(*) FROM outstanding").fetchone()[0]
        errors = db.execute("SELECT count(*) FROM errors").fetchone()[0]
    return PassRecord(PassSpec.from_wire(json.loads(spec)), status, phase, started, ended,
                      json.loads(counters), outstanding, errors, host, pid)


def pass_ids(state_dir: Path) -> list[str]:
    """The ids of the passes recorded in ``state_dir``, oldest first (ids begin with the time)."""
    if not state_dir.is_dir():
        return []
    return sorted(p.name for p in state_dir.iterdir() if (p / "pass.db").is_file())


def try_read_record(state_dir: Path, pass_id: str) -> PassRecord | None:
    """A pass's record, None when it cannot be read (a record being written, a broken file)."""
    try:
        return read_record(state_dir / pass_id)
    except sqlite3.Error:
        return None


def list_passes(state_dir: Path) -> list[PassRecord]:
    records = (try_read_record(state_dir, i) for i in pass_ids(state_dir))
    return [r for r in records if r is not None]


def _resumable_spec(state_dir: Path, pass_id: str) -> PassSpec | None:
    """The spec of pass ``pass_id`` when a run could resume it: unfinished, and not a dry run
    (which leaves nothing to resume). Only the pass row is read: every pass command asks this
    of many records at start."""
    try:
        with closing(_read_only(state_dir / pass_id)) as db:
            spec_json, status = db.execute("SELECT spec, status FROM pass").fetchone()
    except sqlite3.Error:
        return None
    if status not in UNFINISHED:
        return None
    spec = PassSpec.from_wire(json.loads(spec_json))
    return None if spec.rehearsal else spec


def resumable_by_id(state_dir: Path, pass_id: str) -> bool:
    return _resumable_spec(state_dir, pass_id) is not None


def _resumable_specs(state_dir: Path, ops: tuple[str, ...]) -> Iterator[PassSpec]:
    """The resumable passes of ``ops``, newest first; others are skipped by their id alone."""
    for pass_id in reversed(pass_ids(state_dir)):
        if op_of(pass_id) in ops:
            spec = _resumable_spec(state_dir, pass_id)
            if spec is not None:
                yield spec


def find_unfinished(state_dir: Path, op: str, src: str, dst: str) -> str | None:
    """The newest pass with the same op and roots that did not finish, to be resumed. A
    ``--retry-errors`` pass is never resumed by a plain pass: it covers only a few items."""
    return next((spec.id for spec in _resumable_specs(state_dir, (op,))
                 if (spec.src, spec.dst) == (src, dst) and not spec.retry_of), None)


def unfinished_on(state_dir: Path, dst: str, ops: tuple[str, ...]) -> list[PassSpec]:
    """The resumable passes of ``ops`` on target ``dst``."""
    return [spec for spec in _resumable_specs(state_dir, ops) if spec.dst == dst]


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
