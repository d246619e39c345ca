"""Fan a pass's snapshots out to its sinks without ever blocking the coordinator.

Each sink has a thread and a one-slot queue. The coordinator's ``offer`` never waits: a snapshot
that has not been sent when the next one arrives is dropped and the newer one takes its place.
Nothing is lost by that, because snapshots carry totals, not increments. A sink that fails is
logged once when it goes down and once when it comes back; meanwhile every report retries it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from types import TracebackType

from fsclone.config import Config
from fsclone.optionvalues import parse_address
from fsclone.stats.sinks import Sink, SinkError
from fsclone.stats.snapshot import Snapshot

Note = Callable[[str], None]
#: a failure slower than this was a timeout (a hung service), not a refused connection
SLOW_FAILURE = 0.1


class Feed:
    """One sink, its thread, and the latest snapshot waiting for it."""

    def __init__(self, sink: Sink, note: Note) -> None:
        self.sink = sink
        self.note = note
        self.failed = 0
        self.dropped = 0  # superseded by a newer snapshot before they could be sent
        self._cond = threading.Condition()
        self._next: Snapshot | None = None
        self._closing = False
        self._down_since: float | None = None
        self._hung = False  # the last failure took a timeout: the next try would too
        self._thread = threading.Thread(target=self._run, name=f"fsclone-stats {sink.name}",
                                        daemon=True)  # a hung sink never keeps the process up
        self._thread.start()

    def offer(self, snapshot: Snapshot) -> None:
        with self._cond:
            if self._next is not None:
                self.dropped += 1
            self._next = snapshot
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._next is None and not self._closing:
                    self._cond.wait()
                snapshot, self._next = self._next, None
            if snapshot is None or (self._closing and self._hung):
                return  # a hung sink would hold the end of the pass up for another timeout
            self._deliver(snapshot)

    def _deliver(self, snapshot: Snapshot) -> None:
        started = time.monotonic()
        try:
            self.sink.send(snapshot)
        except SinkError as exc:
            self.failed += 1
            self._hung = time.monotonic() - started > SLOW_FAILURE
            if self._down_since is None:
                self._down_since = time.monotonic()
                self.note(f"stats: {self.sink.name} is down ({exc}); the pass goes on, "
                          "retrying at each report")
            return
        self._hung = False
        if self._down_since is not None:
            gap = time.monotonic() - self._down_since
            self._down_since = None
            self.note(f"stats: {self.sink.name} is back (after {gap:.0f}s down; its totals are "
                      "current again)")

    def close(self, timeout: float) -> None:
        """Send what is waiting (the final totals), for at most ``timeout`` seconds. A sink
        whose last try timed out gets no more, so a hung service holds the end of a pass up
        for one sink timeout at most; one that refused gets its (instant) last try."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout)
        if self._thread.is_alive():
            self.note(f"stats: {self.sink.name} did not take the final totals within "
                      f"{timeout:.1f}s")
            return
        self.sink.close()
        if self._down_since is not None:
            self.note(f"stats: {self.sink.name} is still down: the final totals were not sent")


class Reporter:
    """The coordinator's ``Hooks.stats``: adds rates, hands each snapshot to every feed."""

    def __init__(self, sinks: list[Sink], note: Note, close_timeout: float = 10.0) -> None:
        self.feeds = [Feed(sink, note) for sink in sinks]
        self.close_timeout = close_timeout
        self._last: Snapshot | None = None

    def offer(self, snapshot: Snapshot) -> None:
        snapshot = snapshot.with_rates(self._last)
        self._last = snapshot
        for feed in self.feeds:
            feed.offer(snapshot)

    def close(self) -> None:
        deadline = time.monotonic() + self.close_timeout
        for feed in self.feeds:
            feed.close(max(deadline - time.monotonic(), 0.1))

    def __enter__(self) -> Reporter:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def reporter_for(cfg: Config, note: Note) -> Reporter:
    """The sinks the site configured (MEMCACHED, GRAPHITE); none is fine. A sink's client
    library (pymemcache pulls in ssl) is imported only when the site configured that sink."""
    sinks: list[Sink] = []
    if cfg.memcached:
        from fsclone.stats import memcache

        sinks.append(memcache.MemcachedSink(parse_address(cfg.memcached, memcache.DEFAULT_PORT),
                                            cfg.report_interval))
    if cfg.graphite:
        from fsclone.stats import graphite

        sinks.append(graphite.GraphiteSink(parse_address(cfg.graphite, graphite.DEFAULT_PORT),
                                           cfg.graphite_prefix, cfg.pass_label))
    return Reporter(sinks, note)
