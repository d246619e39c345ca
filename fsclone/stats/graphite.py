"""Pass counters to Graphite (carbon's plaintext protocol, through graphyte).

Metric paths (``<prefix>`` is GRAPHITE_PREFIX, "fsclone" by default; see docs/monitoring.md):

- ``<prefix>.<pass>.total.<counter>``, ``.total.rate.<counter>``, ``.total.outstanding``,
  ``.total.queue_depth``: the whole pass;
- ``<prefix>.<pass>.host.<host>.<worker>.<counter>`` and ``...<worker>.rate.<counter>``: one
  worker ("host.index" split at its last dot).

Counters are sent as running totals (Grafana takes rates with ``perSecond``, or reads the
``rate`` series fsclone computes over each report interval). Every name component is sanitized:
a dot in a host name would otherwise add a level to the tree.
"""

from __future__ import annotations

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


def metrics(snap: Snapshot, prefix: str) -> list[tuple[str, float]]:
    """Every (path, value) one snapshot sends."""
    base = f"{metric_prefix(prefix)}.{safe_token(snap.pass_id)}"
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
    def __init__(self, address: tuple[str, int], prefix: str, timeout: float = 1.0) -> None:
        self.name = f"graphite {address[0]}:{address[1]}"
        self.prefix = prefix
        # synchronous (no interval): the reporter's thread is already the background
        self.sender = graphyte.Sender(address[0], address[1], timeout=timeout,
                                      raise_send_errors=True)

    def send(self, snapshot: Snapshot) -> None:
        """All of a snapshot's lines in one TCP connection, so carbon restarting between
        reports costs nothing but the reports it was down for."""
        message = b"".join(self.sender.build_message(path, value, snapshot.time)
                           for path, value in metrics(snapshot, self.prefix))
        try:
            self.sender.send_message(message)
        except OSError as exc:
            raise SinkError.of(exc) from exc
