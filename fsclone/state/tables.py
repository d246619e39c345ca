"""A pass record's tables (one SQLite file per pass), how a record written by an earlier
version is brought up to them, and how their rows read back: shared by the coordinator's
writes (``record``) and the read-only queries (``queries``)."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

from fsclone.chunk import ItemError

SCHEMA = """
CREATE TABLE IF NOT EXISTS pass (id TEXT PRIMARY KEY, spec TEXT, status TEXT, phase INTEGER,
    started REAL, ended REAL, counters TEXT, host TEXT, pid INTEGER, runs INTEGER, ran REAL,
    run_started REAL, active REAL);
CREATE TABLE IF NOT EXISTS outstanding (id TEXT PRIMARY KEY, body BLOB);
CREATE TABLE IF NOT EXISTS groups (id TEXT PRIMARY KEY, remaining INTEGER, then_chunk BLOB,
    failed BLOB);
CREATE TABLE IF NOT EXISTS errors (seq INTEGER PRIMARY KEY, path BLOB, op TEXT, errno INTEGER,
    message TEXT, step TEXT NOT NULL DEFAULT '', side TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS deletions (seq INTEGER PRIMARY KEY, path BLOB, names TEXT,
    entries INTEGER);
CREATE TABLE IF NOT EXISTS skipped (seq INTEGER PRIMARY KEY, path BLOB);
CREATE TABLE IF NOT EXISTS released (path BLOB PRIMARY KEY);
CREATE TABLE IF NOT EXISTS workers (name TEXT PRIMARY KEY, counters TEXT);
CREATE TABLE IF NOT EXISTS redone (path BLOB PRIMARY KEY);
"""

#: columns later versions added to a table, with their definition: a record written before
#: them (and resumed across an upgrade) gets them when it is opened for writing
_ADDED = {
    # the pass learnt how long it ran, over its runs (see record.PassStore.begin_run)
    "pass": {"runs": "INTEGER", "ran": "REAL", "run_started": "REAL", "active": "REAL"},
    "groups": {"failed": "BLOB"},  # barriers learnt to remember a failed member
    "errors": {"step": "TEXT NOT NULL DEFAULT ''",  # item errors learnt where they failed
               "side": "TEXT NOT NULL DEFAULT ''"},
}


def columns(db: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in db.execute(f"PRAGMA table_info({table})")}


def add_missing_columns(db: sqlite3.Connection) -> None:
    """Bring a record written by an earlier version up to :data:`SCHEMA`."""
    for table, added in _ADDED.items():
        have = columns(db, table)
        for column, definition in added.items():
            if column not in have:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
    db.commit()


def read_only(path: Path) -> sqlite3.Connection:
    """The record of the pass in directory ``path``, for reading alone."""
    return sqlite3.connect(f"file:{path / 'pass.db'}?mode=ro", uri=True)


def error_rows(db: sqlite3.Connection, limit: int | None) -> list[ItemError]:
    """The item errors, in the order they happened. A record opened read-only is never
    upgraded: one from before the step and side columns reads with them unknown ("")."""
    where = "step, side" if "step" in columns(db, "errors") else "'', ''"
    sql = f"SELECT path, op, errno, message, {where} FROM errors ORDER BY seq"
    rows = db.execute(sql + (f" LIMIT {int(limit)}" if limit else "")).fetchall()
    return [ItemError(os.fsdecode(p), o, e, m, step, side) for p, o, e, m, step, side in rows]


def redone_rows(db: sqlite3.Connection) -> list[str]:
    """The directories redone chunks ran in (sorted)."""
    try:
        rows = db.execute("SELECT path FROM redone ORDER BY path").fetchall()
    except sqlite3.OperationalError:  # a record written before redone chunks were remembered
        return []
    return [os.fsdecode(path) for (path,) in rows]


def skipped_rows(db: sqlite3.Connection, limit: int | None) -> list[str]:
    """The source directories the pass left on purpose (``--one-file-system``), in order; a
    record from before the table has none."""
    sql = "SELECT path FROM skipped ORDER BY seq" + (f" LIMIT {int(limit)}" if limit else "")
    try:
        return [os.fsdecode(p) for (p,) in db.execute(sql)]
    except sqlite3.OperationalError:
        return []


def worker_rows(db: sqlite3.Connection) -> dict[str, dict[str, int]]:
    try:
        rows = db.execute("SELECT name, counters FROM workers ORDER BY name").fetchall()
    except sqlite3.OperationalError:  # a record written before per-worker totals existed
        return {}
    return {name: json.loads(counters) for name, counters in rows}
