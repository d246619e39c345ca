"""What ``fsclone status`` knows about a pass, from memcached (live, from any machine) or from
the pass records in the state directory (no service needed), with an ETA when the tree's size
is known (``fsclone scan SRC``, or an earlier full pass over the same source).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fsclone.config import Config
from fsclone.errors import UsageError
from fsclone.fsprofile import Profiles
from fsclone.lifecycle import RUNNING
from fsclone.optionvalues import parse_address
from fsclone.process import alive
from fsclone.state.directory import pass_ids
from fsclone.state.queries import PassRecord, list_passes, read_workers, try_read_record
from fsclone.state.trees import expected_entries
from fsclone.stats import counters as C
from fsclone.stats.graphite import split_worker
from fsclone.stats.memcache import DEFAULT_PORT, LiveReader
from fsclone.stats.sinks import SinkError
from fsclone.stats.snapshot import Snapshot

Note = Callable[[str], None]


@dataclass(frozen=True)
class WorkerView:
    name: str
    counters: dict[str, int]
    rates: dict[str, float]

    @property
    def host(self) -> str:
        return split_worker(self.name)[0]


@dataclass
class PassView:
    """One pass as shown: a snapshot, read from memcached or from the pass record (``source``),
    and the size of its source tree when known."""

    snap: Snapshot
    source: str
    expected: int | None = None  # entries in the source tree, as last counted

    @property
    def running(self) -> bool:
        return self.snap.status == RUNNING

    @property
    def elapsed(self) -> float:
        """Seconds the pass has run, over all its runs (to now, when it runs)."""
        since = time.time() - self.snap.time if self.running else 0.0
        return self.snap.seconds + max(since, 0.0)

    @property
    def last_run(self) -> float | None:
        """Seconds of its last (or current) run, when it ran more than once and this is known."""
        if self.snap.runs < 2 or self.snap.active is None:
            return None
        return self.elapsed - self.snap.ran

    @property
    def errors(self) -> int:
        return self.snap.counters.get(C.ERRORS, 0)

    @property
    def rates(self) -> dict[str, float]:
        return self.snap.rates.get("", {})

    @property
    def workers(self) -> list[WorkerView]:
        return [WorkerView(name, c, self.snap.rates.get(name, {}))
                for name, c in sorted(self.snap.workers.items())]

    @property
    def fraction(self) -> float | None:
        """How much of the tree was walked, when its size is known."""
        if not self.expected:
            return None
        return min(self.snap.counters.get(C.SCANNED, 0) / self.expected, 1.0)

    @property
    def eta(self) -> float | None:
        """Seconds left of the walk: the entries not yet seen at the pace seen so far."""
        scanned = self.snap.counters.get(C.SCANNED, 0)
        if not self.running or not self.expected or not scanned or self.snap.phase != "walk":
            return None
        return max(self.expected - scanned, 0) * self.elapsed / scanned

    def to_json(self, with_workers: bool) -> dict[str, Any]:
        s = self.snap
        out: dict[str, Any] = {
            "pass": s.pass_id, "op": s.op, "src": s.src, "dst": s.dst, "status": s.status,
            "phase": s.phase, "host": s.host, "retry_of": s.retry_of, "started": s.started,
            "updated": s.time, "elapsed": round(self.elapsed, 3), "runs": s.runs,
            "last_run": None if self.last_run is None else round(self.last_run, 3),
            "counters": s.counters,
            "outstanding": s.outstanding, "depth": s.depth, "errors": self.errors,
            "rates": self.rates, "expected_entries": self.expected, "fraction": self.fraction,
            "eta": None if self.eta is None else round(self.eta, 1), "source": self.source,
            "profile": s.profile.to_wire() if s.profile else None,
        }
        if with_workers:
            out["workers"] = [{"worker": w.name, "host": w.host, "counters": w.counters,
                               "rates": w.rates} for w in self.workers]
        return out


def _averaged(view: PassView) -> PassView:
    """Rates as averages since the start (the record has no last-interval rates; an ended
    pass's last interval says little)."""
    return PassView(view.snap.with_rates(None), view.source)


def from_record(rec: PassRecord, state_dir: Path, with_workers: bool) -> PassView:
    spec = rec.spec
    status = rec.status
    if status == RUNNING and rec.host == socket.gethostname() and not alive(rec.pid):
        status = "dead"  # its coordinator is gone without a word: run the pass again to resume
    now = time.time()
    active = rec.active
    if status == RUNNING and rec.ran is not None and rec.run_started is not None:
        active = rec.ran + now - rec.run_started  # its record has it to the last commit only
    snap = Snapshot.of_pass(
        spec, status, rec.phase, rec.ended or now, rec.counters,
        read_workers(state_dir / spec.id) if with_workers else {}, rec.outstanding, None,
        host=rec.host, runs=rec.runs or 1, ran=rec.ran or 0.0, active=active)
    return _averaged(PassView(snap, "record"))


def from_doc(doc: dict[str, Any], workers: dict[str, dict[str, Any]]) -> PassView:
    """A memcached document and its workers' (see fsclone.stats.memcache)."""
    rates = {name: d["rates"] for name, d in workers.items()}
    rates[""] = doc["rates"]
    snap = Snapshot(
        pass_id=doc["pass"], op=doc["op"], src=doc["src"], dst=doc["dst"],
        status=doc["status"], phase=doc["phase"], started=doc["started"], time=doc["updated"],
        counters=doc["counters"], workers={name: d["counters"] for name, d in workers.items()},
        outstanding=doc["outstanding"], depth=doc["depth"], host=doc["host"],
        retry_of=doc.get("retry_of", ""), rates=rates, runs=doc.get("runs", 1),
        ran=doc.get("ran", 0.0), active=doc.get("active"),
        profile=Profiles.from_wire(doc["profile"]) if doc.get("profile") else None)
    view = PassView(snap, "memcached")
    return view if view.running else _averaged(view)


class Views:
    """Reads passes for ``status``: memcached when configured (and up), the records otherwise,
    and the records for passes memcached no longer holds."""

    def __init__(self, cfg: Config, note: Note) -> None:
        self.state_dir = cfg.state_path
        self.note = note
        self.reader = (LiveReader(parse_address(cfg.memcached, DEFAULT_PORT))
                       if cfg.memcached else None)
        self._warned = False

    def _docs(self) -> dict[str, dict[str, Any]]:
        if self.reader is None:
            return {}
        try:
            docs = {d["pass"]: d for d in self.reader.passes()}
        except SinkError as exc:
            if not self._warned:
                self.note(f"memcached unreachable ({exc}); showing the pass records")
                self._warned = True
            return {}
        self._warned = False
        return docs

    def all(self) -> list[PassView]:
        records = {r.spec.id: r for r in list_passes(self.state_dir)}
        docs = self._docs()
        views = [self._pick(records.get(i), docs.get(i), False)
                 for i in sorted(set(records) | set(docs))]
        return sorted(views, key=lambda v: (v.snap.started, v.snap.pass_id))

    def one(self, pass_id: str) -> PassView:
        """One pass, by its id or a unique prefix of it; only its own record is read (``--watch``
        asks again every interval, and a long migration piles up records)."""
        recorded = pass_ids(self.state_dir)
        docs = self._docs()
        match = [i for i in set(recorded) | set(docs) if i.startswith(pass_id)]
        if pass_id in match:
            match = [pass_id]
        if len(match) != 1:
            known = "several passes" if match else "no pass"
            raise UsageError(f"{known} match {pass_id!r} (see `fsclone status`)")
        [found] = match
        rec = try_read_record(self.state_dir, found) if found in recorded else None
        if rec is None and found not in docs:
            raise UsageError(f"the record of pass {found} cannot be read")
        return self._pick(rec, docs.get(found), True)

    def _pick(self, rec: PassRecord | None, doc: dict[str, Any] | None,
              with_workers: bool) -> PassView:
        """Memcached's view, unless the record says the pass ended and memcached missed it."""
        use_doc = doc is not None and (rec is None or rec.status == RUNNING
                                       or doc["status"] != RUNNING)
        if use_doc:
            assert doc is not None
            view = from_doc(doc, self._workers(doc) if with_workers else {})
        else:
            assert rec is not None
            view = from_record(rec, self.state_dir, with_workers)
        s = view.snap
        view.expected = expected_entries(self.state_dir, s.op, s.src, s.pass_id)
        return view

    def _workers(self, doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
        assert self.reader is not None
        try:
            return self.reader.workers(doc)
        except SinkError as exc:
            self.note(f"memcached unreachable ({exc}); no worker lines")
            return {}

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
