"""The live view of every pass in memcached: written by the coordinator, read by ``status``.

Keys (values are JSON; see docs/monitoring.md):

- ``fsclone:passes``: the ids of the passes that have live keys, oldest first;
- ``fsclone:<pass>:total``: the pass (roots, status, phase, counters, outstanding chunks, queue
  depth, rates, worker names);
- ``fsclone:<pass>:worker:<host.index>``: one worker's counters and rates.

Only the coordinator writes, and it writes totals with ``set`` (never ``incr``), so the values
are exact whatever was missed, and equal to the pass summary once the pass ends. The keys of a
running pass are refreshed at each report and expire when it stops reporting; those of an ended
pass expire :data:`ENDED_TTL` seconds after it ended.
"""

from __future__ import annotations

import json
from typing import Any

from pymemcache.client.base import Client
from pymemcache.exceptions import MemcacheError

from fsclone.lifecycle import RUNNING
from fsclone.stats.sinks import Sink, SinkError, safe_token
from fsclone.stats.snapshot import Snapshot

DEFAULT_PORT = 11211
INDEX_KEY = "fsclone:passes"
ENDED_TTL = 24 * 3600
#: how long a running pass's keys outlive its last report, in report intervals (at least 10 min)
LIVE_TTL_INTERVALS = 30
_CAS_TRIES = 8

Doc = dict[str, Any]


def total_key(pass_id: str) -> str:
    return f"fsclone:{safe_token(pass_id, '.')}:total"


def worker_key(pass_id: str, worker: str) -> str:
    return f"fsclone:{safe_token(pass_id, '.')}:worker:{safe_token(worker, '.')}"


def connect(address: tuple[str, int], timeout: float) -> Client:
    """A client that waits for replies (so a hung server shows as a timeout) and never longer
    than ``timeout`` for a connection or an answer."""
    return Client(address, connect_timeout=timeout, timeout=timeout, no_delay=True,
                  default_noreply=False)


def pass_doc(snap: Snapshot) -> Doc:
    return {
        "pass": snap.pass_id, "op": snap.op, "src": snap.src, "dst": snap.dst,
        "status": snap.status, "phase": snap.phase, "host": snap.host, "retry_of": snap.retry_of,
        "started": snap.started, "updated": snap.time, "counters": snap.counters,
        "outstanding": snap.outstanding, "depth": snap.depth, "rates": snap.rates.get("", {}),
        "workers": sorted(snap.workers), "runs": snap.runs, "ran": snap.ran,
        "active": snap.active, "profile": snap.profile.to_wire() if snap.profile else None,
    }


def worker_doc(snap: Snapshot, worker: str) -> Doc:
    return {"worker": worker, "updated": snap.time, "counters": snap.workers[worker],
            "rates": snap.rates.get(worker, {})}


class MemcachedSink(Sink):
    def __init__(self, address: tuple[str, int], interval: float, timeout: float = 0.5) -> None:
        self.name = f"memcached {address[0]}:{address[1]}"
        self.client = connect(address, timeout)
        self.live_ttl = max(600, int(interval * LIVE_TTL_INTERVALS))

    def send(self, snapshot: Snapshot) -> None:
        ttl = self.live_ttl if snapshot.status == RUNNING else ENDED_TTL
        # workers first: whoever reads the total finds the worker keys it names
        values = {worker_key(snapshot.pass_id, w): json.dumps(worker_doc(snapshot, w))
                  for w in snapshot.workers}
        values[total_key(snapshot.pass_id)] = json.dumps(pass_doc(snapshot))
        try:
            refused = self.client.set_many(values, expire=ttl)
            if refused:
                raise SinkError(f"memcached refused {len(refused)} keys")
            self._index(snapshot.pass_id)
        except (MemcacheError, OSError) as exc:
            raise SinkError.of(exc) from exc

    def _index(self, pass_id: str) -> None:
        """Add the pass to the index, dropping passes whose keys expired. Compare-and-set, so
        two coordinators adding their passes at once both get in."""
        for _ in range(_CAS_TRIES):
            raw, cas = self.client.gets(INDEX_KEY)
            ids: list[str] = json.loads(raw) if raw else []
            if pass_id in ids:
                return
            alive = self.client.get_many([total_key(i) for i in ids]) if ids else {}
            ids = [i for i in ids if total_key(i) in alive] + [pass_id]
            value = json.dumps(ids)
            if cas is None:
                done = self.client.add(INDEX_KEY, value)
            else:
                done = bool(self.client.cas(INDEX_KEY, value, cas))
            if done:
                return
        raise SinkError(f"could not add {pass_id} to {INDEX_KEY}: too many concurrent updates")

    def close(self) -> None:
        self.client.close()


class LiveReader:
    """What ``status`` reads from memcached."""

    def __init__(self, address: tuple[str, int], timeout: float = 2.0) -> None:
        self.client = connect(address, timeout)

    def _load(self, keys: list[str]) -> dict[str, Any]:
        try:
            found = self.client.get_many(keys) if keys else {}
        except (MemcacheError, OSError) as exc:
            raise SinkError.of(exc) from exc
        return {str(k): json.loads(v) for k, v in found.items()}

    def passes(self) -> list[Doc]:
        """Every pass with live keys, oldest first."""
        index: list[str] = self._load([INDEX_KEY]).get(INDEX_KEY, [])
        docs = self._load([total_key(i) for i in index])
        return [docs[total_key(i)] for i in index if total_key(i) in docs]

    def workers(self, doc: Doc) -> dict[str, Doc]:
        """The worker documents a pass document names, by worker name."""
        keys = {worker_key(doc["pass"], w): w for w in doc.get("workers", [])}
        return {keys[k]: d for k, d in self._load(list(keys)).items()}

    def close(self) -> None:
        self.client.close()
