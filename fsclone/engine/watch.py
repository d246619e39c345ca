"""The watcher: keeps DST converged with SRC from a change feed (``fsclone watch SRC DST``).

The feed (fanotify, or a Lustre source's changelogs: fsclone.engine.watchfeed) is opened
first. Unless it resumes from a trustworthy record (changelogs replay from their cursor;
fanotify replays nothing, so every start is one), a full ``pass sync`` runs while the feed's
events are collected: nothing changed after the feed's start is missed, and nothing before it
needs the feed. Then, in a loop, the dirty directories read are
recorded in the pending store (fsclone.state.changes, on disk before the feed's cursor is
committed) and applied by a ``pass sync --changes`` (fsclone.engine.changes) once the events
go quiet for ``WATCH_QUIET`` seconds, or once the oldest change waited ``WATCH_MAX_WAIT``
seconds under a steady stream of them. A directory changed while a batch runs is recorded
again and stays pending for the next one.

The feed is read in a thread of its own (:class:`Collector`), so that the kernel's queue is
drained while a batch or a full sync runs; the main thread records what it collected between
batches and at every progress tick of a running pass. A gap (events lost) is recorded, a new
unbroken run of the feed begins, and a full sync follows (the events go on being collected).
"""

from __future__ import annotations

import errno
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from fsclone.changes.feed import DirtyDir, FeedGap
from fsclone.changes.fidpaths import ChangelogError
from fsclone.config import Config
from fsclone.engine.launch import PassRequest
from fsclone.engine.roots import check_roots
from fsclone.engine.watchfeed import WatchFeed
from fsclone.errors import GuardError, Interrupted, LockedError, Terminated
from fsclone.lifecycle import DONE, Summary
from fsclone.spec import PassSpec
from fsclone.state.changes import ChangeStore
from fsclone.state.directory import open_state_dir, pass_dir
from fsclone.state.queries import read_errors
from fsclone.state.watch import (
    APPLYING,
    FULL_SYNC,
    STOPPED,
    WATCHING,
    WatchStatus,
    forget_pass,
    read_status,
    write_status,
)
from fsclone.stats import counters as C

#: how often the main thread looks at what the collector has (and the status is written)
_TICK = 0.1
#: how long the collector lets events gather after a read that found some: the kernel merges
#: the events of one object while they wait in its queue, and one read resolves each
#: directory once for all its events
_GATHER = 0.05
#: the longest wait before items that keep failing are taken again, and the wait while
#: another pass holds the target (seconds)
_RETRY_MAX, _BUSY_WAIT = 60.0, 2.0
_STATUS_EVERY = 0.5

#: runs one pass to its end: the CLI's (transport, display); ``tick`` is to be called from the
#: pass's progress hook, about every half second
PassRunner = Callable[[Config, PassRequest, Callable[[], None]], tuple[PassSpec, Summary]]


@dataclass
class Collected:
    """What the collector read since it was last asked."""

    dirs: set[DirtyDir] = field(default_factory=set)
    cursor: bytes = b""
    first: float | None = None  # when the first of them was read
    gap: str = ""  # events were lost (the last gap's reason)


class Collector:
    """Reads a feed in a thread of its own, into what :meth:`take` hands the main thread."""

    def __init__(self, feed: WatchFeed) -> None:
        self.feed = feed
        self.last = 0.0  # when an event was last read
        self.woke = threading.Event()
        self._got = Collected()
        self._lock = threading.Lock()
        self._reading = threading.Lock()  # held by a read, and by a restart of the feed
        self._stop = threading.Event()
        self._failed: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="fsclone-feed", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._reading:
                try:
                    dirs = self.feed.read(self.feed.wait)
                    gap = ""
                except FeedGap as exc:
                    dirs, gap = [], str(exc)
                except BaseException as exc:  # handed to the main thread, which raises it
                    self._failed = exc
                    self.woke.set()
                    return
                if dirs or gap:
                    with self._lock:
                        now = time.time()
                        self._got.dirs.update(dirs)
                        self._got.cursor = self.feed.cursor()
                        self._got.gap = gap or self._got.gap
                        self._got.first = self._got.first or now
                        self.last = now
            if not dirs and not gap:
                self._stop.wait(self.feed.idle)
                continue
            self.woke.set()
            self._stop.wait(_GATHER)

    def restart(self) -> bytes:
        """The feed placed anew (:meth:`WatchFeed.restart`) between two reads, its cursor
        returned; a gap read before is of records the full sync that follows covers. Fanotify
        has nothing to place: its blocking read's lock is not waited for."""
        if not self.feed.replayable:
            return b""
        with self._reading:
            cursor = self.feed.restart()
            with self._lock:
                self._got.cursor, self._got.gap = cursor, ""
        return cursor

    def take(self) -> Collected:
        """Everything read since the last take (a failure of the reading thread raised)."""
        if self._failed is not None:
            raise self._failed
        with self._lock:
            got, self._got = self._got, Collected()
            self.woke.clear()
        return got

    def pending_since(self) -> float | None:
        """When the oldest change not yet taken was read."""
        return self._got.first

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class Watcher:
    """The loop over one pair of roots, its lock and feed taken (see :func:`watch`)."""

    def __init__(self, cfg: Config, state: Path, store: ChangeStore, feed: WatchFeed,
                 run: PassRunner, say: Callable[[str], None]) -> None:
        self.cfg, self.state, self.store, self.feed = cfg, state, store, feed
        self.run_pass, self.say = run, say
        self.collector = Collector(feed)
        before = read_status(state, store.src, store.dst)
        self.status = WatchStatus(store.src, store.dst, pid=os.getpid(),
                                  host=socket.gethostname())
        if before is not None:  # what is still true of the watcher's last run
            self.status.last_full_sync = before.last_full_sync
            self.status.last_gap, self.status.last_gap_at = before.last_gap, before.last_gap_at
        self.full_needed = ""  # why a full sync must run next ("": none)
        self.waiting_since: float | None = None  # oldest change recorded, not yet taken
        self.taken_since: float | None = None  # oldest change the running batch took
        self.failures = 0  # batches in a row whose items failed
        self.retry_at = 0.0  # no batch before then (time.time())
        self._status_at = 0.0

    def loop(self) -> None:
        """Watch until a signal stops it (Interrupted, exit 130)."""
        self.store.feed_started(self.feed.kind, resumed=self.feed.resumed)
        trust = self.store.trust(replayable=self.feed.replayable)
        self.full_needed = "" if trust.ok else trust.why
        if trust.ok:
            self.say(f"resuming from the {self.feed.kind} cursor: no full sync")
            if self.store.pending():  # what a watcher before us recorded and did not apply
                self.waiting_since = time.time()
        self.collector.start()
        try:
            while True:
                if self.full_needed and time.time() >= self.retry_at:
                    self._full_sync()
                elif self._due():
                    self._apply()
                if self.status.state != WATCHING and not self.full_needed:
                    self._publish(WATCHING)
                self.collector.woke.wait(_TICK)
                self.absorb()
        except KeyboardInterrupt as exc:
            raise self._stopped("SIGTERM" if isinstance(exc, Terminated) else "SIGINT") \
                from None
        except Interrupted as exc:  # a pass's, which says by which signal
            raise self._stopped("SIGTERM" if "SIGTERM" in str(exc) else "SIGINT") from None
        finally:
            self.collector.stop()
            self._publish(STOPPED)

    def absorb(self) -> None:
        """Record what the collector read (on disk when this returns); a gap calls for a full
        sync. Called between batches and at every progress tick of a running pass."""
        got = self.collector.take()
        if got.gap:
            self._lost(got.gap)
        if got.dirs:
            self.store.record(got.dirs, got.cursor)
            self.waiting_since = _earliest(self.waiting_since, got.first)
        self.status.events = self.feed.events
        if time.monotonic() - self._status_at >= _STATUS_EVERY:
            self._publish(self.status.state)

    def _lost(self, why: str) -> None:
        """Events were lost: said, in the record and the status, and a full sync follows."""
        self.say(f"events were lost ({why}): a full sync follows")
        self.store.gap(why)
        self.store.feed_started(self.feed.kind, resumed=False)  # a new unbroken run begins now
        self.status.last_gap, self.status.last_gap_at = why, time.time()
        self.full_needed = f"events were lost ({why})"

    def _commit(self, cursor: bytes) -> None:
        """The feed told that what it read up to ``cursor`` is on DST (changelogs: cleared)."""
        try:
            self.feed.commit(cursor)
        except FeedGap as exc:
            self._lost(str(exc))
        except ChangelogError as exc:  # nothing lost: the next commit clears them
            self.say(f"changelogs not cleared yet ({exc})")

    def _due(self) -> bool:
        """Whether to apply the pending set now: events quiet, or the oldest waited long;
        after a batch whose items failed, not before their retry is due."""
        now = time.time()
        if self.waiting_since is None or now < self.retry_at:
            return False
        return now - self.collector.last >= self.cfg.watch_quiet or \
            now - self.waiting_since >= self.cfg.watch_max_wait

    def _apply(self) -> None:
        """One ``pass sync --changes`` over the pending set; what it took goes from the store
        once it is complete (fsclone.engine.changes), what was recorded meanwhile stays."""
        self.taken_since, self.waiting_since = self.waiting_since, None
        # what the feed read up to the set the batch takes; later reads are the next one's
        cursor = self.store.cursor()
        self._publish(APPLYING)
        ran = self._run(changes=True)
        taken, self.taken_since = self.taken_since, None
        if ran is None:
            self.waiting_since = _earliest(self.waiting_since, taken)
            return
        spec, summary = ran
        self._check(spec, summary)
        if not summary.error_count:
            self._commit(cursor)
            if not summary.counters.get(C.CHANGED):
                forget_pass(self.state, spec.id)

    def _full_sync(self) -> None:
        """A full ``pass sync``, started anew (a resumed one would skip what it walked before
        the feed's mark); the events go on being collected meanwhile."""
        why, self.full_needed = self.full_needed, ""
        try:
            cursor = self.collector.restart()
        except (FeedGap, ChangelogError) as exc:
            self.say(f"changelogs not read ({exc}): tried again in {_BUSY_WAIT:.0f}s")
            self.full_needed, self.retry_at = why, time.time() + _BUSY_WAIT
            return
        if cursor:
            self.store.record([], cursor)
        self.say(f"full sync of {self.store.src} to {self.store.dst}: {why}")
        self._publish(FULL_SYNC)
        ran = self._run(changes=False)
        if ran is None:
            self.full_needed = why
            return
        spec, summary = ran
        self._check(spec, summary)
        if not summary.error_count:
            self._commit(cursor)  # the walk saw what the records up to it tell
        else:
            # the feed recorded every change since the sync started, and what the sync
            # failed on is recorded now: the record tells all that DST lacks
            self.store.synced(spec.started)
        self.status.last_full_sync = spec.started

    def _run(self, changes: bool) -> tuple[PassSpec, Summary] | None:
        """A sync pass of the loop: ``--changes``, or a full one started anew. None when
        another pass holds the target (a site's own sync, say): the loop tries again in
        ``_BUSY_WAIT`` seconds, what was pending still pending."""
        try:
            return self.run_pass(replace(self.cfg, changes=changes, restart=not changes),
                                 PassRequest(op="sync", src=self.store.src,
                                             dst=self.store.dst), self.absorb)
        except LockedError as exc:
            self.say(f"{exc}: tried again in {_BUSY_WAIT:.0f}s")
            self.retry_at = time.time() + _BUSY_WAIT
            return None

    def _check(self, spec: PassSpec, summary: Summary) -> None:
        """After a pass: stop on one that was refused (a delete guard: it would be refused
        again, and someone must look). Record the items that failed as pending, taken again
        with the next batch; or, while items keep failing for another reason than vanishing
        (a race with a writer, whose removal the feed reports as a change of its own), after
        a delay that doubles up to a minute."""
        if summary.status != DONE:
            raise GuardError(f"pass {spec.id} was {summary.status}: the watcher stops, its "
                             "directories stay pending (fsclone status)")
        if not summary.error_count:
            self.failures, self.retry_at = 0, 0.0
            return
        failed = read_errors(pass_dir(self.state, spec.id))
        # a directory's path: its subtree again; another's: its directory (the runner takes
        # the nearest directory present of a path)
        self.store.record([DirtyDir(os.fsencode(e.path), True) for e in failed],
                          self.store.cursor())
        self.waiting_since = _earliest(self.waiting_since, time.time())
        when = "with the next batch"
        if any(e.errno != errno.ENOENT or e.side != "source" for e in failed):
            self.failures += 1
            delay = min(_RETRY_MAX, 2.0 ** self.failures)
            self.retry_at, when = time.time() + delay, f"in {delay:.0f}s"
        self.say(f"pass {spec.id}: {summary.error_count} items failed (fsclone errors "
                 f"{spec.id}); taken again {when}")

    def _publish(self, state: str) -> None:
        """Write the status ``fsclone status`` shows."""
        self.status.state = state
        self.status.pending = len(self.store.pending())
        self.status.oldest = _earliest(_earliest(self.waiting_since, self.taken_since),
                                       self.collector.pending_since())
        write_status(self.state, self.status)
        self._status_at = time.monotonic()

    def _stopped(self, signal: str) -> Interrupted:
        self.status.pending = len(self.store.pending())
        again = "it resumes from the changelogs' cursor" if self.feed.replayable else \
            "it starts with a full sync"
        return Interrupted(f"watcher of {self.store.src} to {self.store.dst} stopped by {signal}; "
                           f"{self.status.pending} directories stay pending; run it again to go "
                           f"on ({again})")


def _earliest(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


def watch(cfg: Config, src: str, dst: str, run: PassRunner, say: Callable[[str], None]) -> None:
    """Take the pair's lock (refused while the reverse watcher holds its own), open the feed,
    and watch until a signal (Interrupted, exit 130)."""
    src, dst = check_roots(src, dst, needs_dst=False)
    state = open_state_dir(cfg.state_path)
    store = ChangeStore.open(state, src, dst)
    try:
        store.hold(f"fsclone watch {src} {dst}")
        _refuse_reverse(state, src, dst)
        feed = WatchFeed(cfg, store)
        try:
            say(f"watching {src} to {dst} ({feed.kind})")
            Watcher(cfg, state, store, feed, run, say).loop()
        finally:
            feed.close()
    finally:
        store.close()


def _refuse_reverse(state: Path, src: str, dst: str) -> None:
    """A watcher of DST to SRC must not run with us: each would undo the other's changes.
    Asked after our own lock is held, so of two started together one sees the other."""
    reverse = ChangeStore.find(state, dst, src)
    if reverse is None:
        return
    try:
        if reverse.watched():
            raise LockedError(f"the reverse watcher ({dst} to {src}) is running: stop it "
                              f"before watching {src} to {dst}")
    finally:
        reverse.close()
