"""How many chunks a local pass works on at once: its depth, sized to the filesystems, not to
the cores alone.

On a local filesystem a request is a few µs of CPU, and a worker process per core keeps the
cores busy. On a network or parallel filesystem (and FUSE) every lookup, stat, create or
setattr is a round trip of 0.1 to 1 ms, during which a worker only waits: a pass is then as
fast as the requests it keeps in flight, until the CPU of the client (and of a FUSE daemon)
runs out. The depth is reached with threads inside each worker process, each running chunks
of its own (measured against as many processes: docs/performance.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fsclone.fs import latency

#: filesystems whose every request may be a round trip to a server (or a FUSE daemon)
REMOTE_KINDS = frozenset({"lustre", "gpfs", "nfs", "fuse"})
#: µs of CPU (the client's and a FUSE daemon's together) a metadata request costs here: a
#: request in flight per this many µs of latency, per core, keeps the cores busy
REQUEST_CPU_US = 20
#: a request this slow is a round trip, whatever the filesystem calls itself (µs)
ROUND_TRIP_US = 50
#: the least in flight per core on a network or parallel filesystem, whose client may have
#: answered the probe from its cache, and the most: beyond it threads only queue for the CPU
MIN_PER_CORE, MAX_PER_CORE = 8, 32
#: the most in flight from one machine
MAX_DEPTH = 256


def depth(kind: str, latency_us: float, cores: int) -> int:
    """Chunks in flight for a filesystem of ``kind`` (fs.fstype) whose metadata requests take
    ``latency_us``, on ``cores`` cores: one per core where requests are local and fast (as
    many as the cores can run; today's default), else, on a remote kind or where a request
    was measured to be a round trip, enough to cover the latency (Little's law: the requests
    a core can issue while one waits), within MIN_PER_CORE..MAX_PER_CORE a core."""
    cores = max(1, cores)
    if kind not in REMOTE_KINDS and latency_us < ROUND_TRIP_US:
        return cores
    per_core = 1 + math.ceil(latency_us / REQUEST_CPU_US)
    return min(max(per_core, MIN_PER_CORE) * cores, MAX_PER_CORE * cores, MAX_DEPTH)


@dataclass(frozen=True)
class Concurrency:
    """How a local pass runs its chunks: ``workers`` processes of ``threads`` threads each,
    and why (the summary says it)."""

    workers: int
    threads: int
    why: str

    @property
    def in_flight(self) -> int:
        return self.workers * self.threads

    def as_json(self) -> dict[str, object]:
        return {"depth": self.in_flight, "workers": self.workers, "threads": self.threads,
                "why": self.why}

    def __str__(self) -> str:
        return f"depth {self.in_flight} ({self.workers} workers x {self.threads} threads): " \
               f"{self.why}"


def choose_depth(asked: int | None, workers: int, cores: int, roots: tuple[str, str],
                 ) -> Concurrency:
    """The concurrency of a local pass: at least ``asked`` (``--depth``) in flight if given,
    else at most the deeper of the two roots' :func:`depth`, probed now (``--workers`` given
    high by hand, as before there were threads, is not multiplied much further); never fewer
    in flight than ``workers`` processes."""
    workers = max(1, workers)
    if asked is not None:
        return Concurrency(workers, max(1, math.ceil(asked / workers)), "as asked (--depth)")
    found: list[tuple[int, str]] = []
    for side, root in zip(("source", "target"), roots, strict=True):
        try:
            kind, us = latency.probe(root)
        except OSError as exc:  # the pass reports it; the depth stays shallow
            found.append((cores, f"{side} not probed ({exc.strerror})"))
            continue
        found.append((depth(kind, us, cores), f"{side} {kind}, {us:.0f} us a request"))
    want = max(n for n, _ in found)
    return Concurrency(workers, max(1, want // workers), "; ".join(w for _, w in found))
