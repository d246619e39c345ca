"""Pass counters to Graphite (carbon's plaintext protocol, through graphyte).

Metric paths (``<prefix>`` is GRAPHITE_PREFIX, "fsclone" by default; see docs/monitoring.md):

- ``<prefix>.<label>.<op>.total.<counter>``, ``.total.rate.<counter>``, ``.total.outstanding``,
  ``.total.queue_depth``: the whole pass;
- ``<prefix>.<label>.<op>.host.<host>.<worker>.<counter>`` and ``...<worker>.rate.<counter>``:
  one worker ("host.index" split at its last dot).

``<label>`` names the migration (PASS_LABEL, else the target's basename), not the pass: every
pass of a migration writes the same series, so the tree stops growing after the first pass and
carbon's create limit (MAX_CREATES_PER_MINUTE) is met once, not at each pass. The pass id is in
memcached and ``fsclone status``. Counters are sent as running totals (Grafana takes rates with
``perSecond``, or reads the ``rate`` series fsclone computes over each report interval). Every
name component is sanitized: a dot in a host name would otherwise add a level to the tree.
"""

from __future__ import annotations

import os

import graphyte

from fsclone.stats import counters as C
from fsclone.stats.sinks import Sink, SinkError, safe_token
from fsclone.stats.snapshot import Snapshot

DEFAULT_PORT = 2003
#: counters sent even while zero, so every dashboard panel has a series from the first report
ALWAYS = (C.SCANNED, C.COPIED, C.BYTES, C.UPDATED, C.CREATED, C.SAME, C.DELETED, C.SKIP_NEWER,
          C.SKIP_OLDER, C.SKIP_EXCLUDED, C.CHANGED, C.ERRORS, C.CHUNKS)


def split_worker(worker: str) -> tuple[str, str]:
    """("host", "index") from a worker name "host.index" (a name without a dot is a host)."""
    host, _, index = worker.rpartition(".")
    return (host, index) if host else (worker, "0")


def metric_prefix(prefix: str) -> str:
    return ".".join(safe_token(part) for part in prefix.split(".") if part)


def series_label(snap: Snapshot, pass_label: str = "") -> str:
    """The node naming a migration: the site's PASS_LABEL, else the target's basename (the
    source's for a scan, which has no target)."""
    return safe_token(pass_label or os.path.basename(os.path.normpath(snap.dst or snap.src)))


def metrics(snap: Snapshot, prefix: str, pass_label: str = "") -> list[tuple[str, float]]:
    """Every (path, value) one snapshot sends. Each series a pass ever sends is in every one of
    its snapshots (counters only grow, workers only join), so the final report ends them all."""
    base = f"{metric_prefix(prefix)}.{series_label(snap, pass_label)}.{safe_token(snap.op)}"
    out = _group(f"{base}.total", snap.counters, snap.rates.get("", {}))
    out.append((f"{base}.total.outstanding", snap.outstanding))
    if snap.depth is not None:
        out.append((f"{base}.total.queue_depth", snap.depth))
    for worker, counters in sorted(snap.workers.items()):
        host, index = split_worker(worker)
        path = f"{base}.host.{safe_token(host)}.{safe_token(index)}"
        out += _group(path, counters, snap.rates.get(worker, {}))
    return out


def _group(path: str, counters: dict[str, int], rates: dict[str, float]) -> list[tuple[str, float]]:
    names = sorted(set(ALWAYS) | set(counters))
    out: list[tuple[str, float]] = [(f"{path}.{safe_token(n)}", counters.get(n, 0)) for n in names]
    out += [(f"{path}.rate.{safe_token(n)}", v) for n, v in sorted(rates.items())]
    return out


class GraphiteSink(Sink):
    def __init__(self, address: tuple[str, int], prefix: str, pass_label: str = "",
                 timeout: float = 1.0) -> None:
        self.name = f"graphite {address[0]}:{address[1]}"
        self.prefix = prefix
        self.pass_label = pass_label
        # synchronous (no interval): the reporter's thread is already the background
        self.sender = graphyte.Sender(address[0], address[1], timeout=timeout,
                                      raise_send_errors=True)

    def send(self, snapshot: Snapshot) -> None:
        """All of a snapshot's lines in one TCP connection, so carbon restarting between
        reports costs nothing but the reports it was down for."""
        message = b"".join(self.sender.build_message(path, value, snapshot.time)
                           for path, value in metrics(snapshot, self.prefix, self.pass_label))
        try:
            self.sender.send_message(message)
        except OSError as exc:
            raise SinkError.of(exc) from exc
