"""A snapshot of a running pass, taken by the coordinator and handed to the stats sinks.

The coordinator sees every result with its worker's name and counters, so it holds exact totals
per worker and per pass; sinks get copies of those totals (never increments), which is why a sink
that missed reports, or a memcached that restarted, shows the right numbers at the next one.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field, replace

from fsclone.fsprofile import Profiles
from fsclone.lifecycle import phase_name
from fsclone.spec import PassSpec
from fsclone.stats import counters as C

#: the counters that also get a per-second rate (dashboards, ``status``)
RATE_KEYS = (C.SCANNED, C.COPIED, C.BYTES)


@dataclass(frozen=True)
class Snapshot:
    """Totals of one pass at one moment. ``workers`` maps "host.index" to that worker's
    counters; they add up to ``counters``. ``rates`` are per second over the last interval,
    keyed like ``workers`` plus "" for the whole pass."""

    pass_id: str
    op: str
    src: str
    dst: str
    status: str
    phase: str
    started: float
    time: float
    counters: dict[str, int]
    workers: dict[str, dict[str, int]]
    outstanding: int
    depth: int | None
    host: str = field(default_factory=socket.gethostname)
    retry_of: str = ""
    rates: dict[str, dict[str, float]] = field(default_factory=dict)
    #: the coordinators that ran the pass so far, the seconds those before the current one
    #: took, and the seconds all of them had run by ``time``; None: unknown (an older record
    #: or memcached document), so the time since ``started`` stands in
    runs: int = 1
    ran: float = 0.0
    active: float | None = None
    #: what the pass found of its filesystems (None: not known, an older document)
    profile: Profiles | None = None

    @classmethod
    def of_pass(cls, spec: PassSpec, status: str, phase: int, time: float,
                counters: dict[str, int], workers: dict[str, dict[str, int]], outstanding: int,
                depth: int | None, host: str | None = None, runs: int = 1, ran: float = 0.0,
                active: float | None = None) -> Snapshot:
        """The snapshot of pass ``spec`` at phase index ``phase``; the counters are copied (the
        sinks read them on other threads). ``host``: the coordinator's, when not this one."""
        return cls(pass_id=spec.id, op=spec.op, src=spec.src, dst=spec.dst, status=status,
                   phase=phase_name(spec.op, phase), started=spec.started, time=time,
                   counters=dict(counters), workers={w: dict(c) for w, c in workers.items()},
                   outstanding=outstanding, depth=depth, host=host or socket.gethostname(),
                   retry_of=spec.retry_of, runs=runs, ran=ran, active=active,
                   profile=spec.profile)

    @property
    def seconds(self) -> float:
        """How long the pass had run by ``time``, over all its runs."""
        return self.active if self.active is not None else max(self.time - self.started, 0.0)

    def with_rates(self, previous: Snapshot | None) -> Snapshot:
        """This snapshot with per-second rates since ``previous`` (the pass's averages, over
        the time its runs took, when None)."""
        secs = max(self.time - previous.time if previous else self.seconds, 1e-3)
        before = previous.workers if previous else {}

        def rates(now: dict[str, int], then: dict[str, int]) -> dict[str, float]:
            return {k: round(max(now.get(k, 0) - then.get(k, 0), 0) / secs, 3) for k in RATE_KEYS}

        out = {w: rates(c, before.get(w, {})) for w, c in self.workers.items()}
        out[""] = rates(self.counters, previous.counters if previous else {})
        return replace(self, rates=out)
