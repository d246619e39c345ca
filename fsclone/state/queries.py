"""Reading pass records without taking part in them: for ``status``, ``errors``,
``--retry-errors``, the sweep of dead passes, and finding the pass a run resumes."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from fsclone.chunk import Chunk, ItemError, loads_chunk
from fsclone.lifecycle import UNFINISHED
from fsclone.spec import PassSpec
from fsclone.state.directory import op_of, pass_ids
from fsclone.state.tables import columns, error_rows, read_only, redone_rows, worker_rows


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
    #: the runs of the pass (coordinators that started or resumed it), the seconds those before
    #: the last one took, when the last one started, and the seconds of all of them to the last
    #: commit; None for a record written before they were kept
    runs: int | None = None
    ran: float | None = None
    run_started: float | None = None
    active: float | None = None


def read_errors(path: Path, limit: int | None = None) -> list[ItemError]:
    """A pass's item errors, in the order they happened (for ``errors`` and ``--retry-errors``)."""
    with closing(read_only(path)) as db:
        return error_rows(db, limit)


def read_workers(path: Path) -> dict[str, dict[str, int]]:
    """A pass's counters per worker ("host.index"), for ``status ID``."""
    with closing(read_only(path)) as db:
        return worker_rows(db)


def read_chunks(path: Path) -> list[Chunk]:
    """The chunks a pass still had to run: outstanding, and held back by barriers."""
    with closing(read_only(path)) as db:
        rows = db.execute("SELECT body FROM outstanding UNION ALL "
                          "SELECT then_chunk FROM groups").fetchall()
    return [loads_chunk(body) for (body,) in rows]


def read_redone(path: Path) -> list[str]:
    """The directories a pass's redone chunks ran in (where a dead run may have left temps)."""
    with closing(read_only(path)) as db:
        return redone_rows(db)


def read_record(path: Path) -> PassRecord:
    """Read a pass record without taking part in it (for status)."""
    with closing(read_only(path)) as db:
        timing = ("runs, ran, run_started, active" if "runs" in columns(db, "pass")
                  else "NULL, NULL, NULL, NULL")
        spec, status, phase, started, ended, counters, host, pid, *times = db.execute(
            "SELECT spec, status, phase, started, ended, counters, host, pid, "
            f"{timing} FROM pass").fetchone()
        outstanding = db.execute("SELECT count(*) FROM outstanding").fetchone()[0]
        errors = db.execute("SELECT count(*) FROM errors").fetchone()[0]
    return PassRecord(PassSpec.from_wire(json.loads(spec)), status, phase, started, ended,
                      json.loads(counters), outstanding, errors, host, pid, *times)


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
        with closing(read_only(state_dir / pass_id)) as db:
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
    ``--retry-errors`` or ``--changes`` pass is never resumed by a plain pass: it covers only a few
    items."""
    return next((spec.id for spec in _resumable_specs(state_dir, (op,))
                 if (spec.src, spec.dst) == (src, dst) and not spec.retry_of
                 and not spec.changes), None)


def unfinished_on(state_dir: Path, dst: str, ops: tuple[str, ...]) -> list[PassSpec]:
    """The resumable passes of ``ops`` on target ``dst``."""
    return [spec for spec in _resumable_specs(state_dir, ops) if spec.dst == dst]
