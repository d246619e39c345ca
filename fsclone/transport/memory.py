"""The in-memory transport: worker threads in this process run the engine's worker loop over
an in-process queue, with a broker's semantics: delivery is at least once (a message its
worker took and did not acknowledge, because the worker died or gave it back, is delivered
again with its delivery count), a message delivered more than ``delivery_limit`` times more
is dead-lettered, and results are taken back by the broker until the coordinator settles
them, so a coordinator that stops leaves them to the next one on the same broker.

It needs no process, pipe or server, so tests drive the real Coordinator and PassStore with
it deterministically, and make on purpose what a real transport does by accident: lose a
result, kill a worker at a chosen step, deliver a result twice, replay a message, fail a chunk
as a whole, and hold deliveries back until some other work is done.

xattr reads are thread-safe (fs.threadcwd gives each thread that steps into a directory a cwd
of its own), so the worker threads never move the process's cwd.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from fsclone.chunk import Chunk, ItemError, Result
from fsclone.engine.worker import ChunkRunner, work, worker_name
from fsclone.errors import TransportError
from fsclone.spec import PassSpec
from fsclone.transport.base import Delivery, Message, Transport

#: which messages a test hook applies to: the chunk, and how often it was delivered before
Match = Callable[[Chunk, int], bool]
#: how many more deliveries a message may have after its first (as the amqp transport's)
DELIVERY_LIMIT = 4


class WorkerKilled(BaseException):
    """A test killed a worker thread here (not an Exception: nothing in a chunk catches it)."""


class CoordinatorKilled(BaseException):
    """A test stopped the coordinator at a poll (see :class:`MemoryTransport`)."""


@dataclass
class _Rule:
    """A test hook: applies to the next ``times`` messages that ``match``."""

    match: Match
    times: int | None = 1  # None: every one
    why: str = ""

    def takes(self, chunk: Chunk, earlier: int) -> bool:
        if self.times == 0 or not self.match(chunk, earlier):
            return False
        if self.times is not None:
            self.times -= 1
        return True


@dataclass
class _Entry:
    """A work message in the queue: one chunk."""

    chunk: Chunk
    earlier: int = 0
    unconfirmed: bool = False  # its results were lost: given back at the ack


@dataclass
class _Serving:
    """The pass the workers serve, and its worker threads."""

    spec: PassSpec
    key: bytes
    threads: dict[int, threading.Thread] = field(default_factory=dict)
    stopping: bool = False


class MemoryBroker:
    """The queues, the worker threads and the test hooks; it outlives the transports that use
    it, as a broker outlives its coordinators."""

    def __init__(self, workers: int = 1, delivery_limit: int = DELIVERY_LIMIT) -> None:
        self.size = max(1, workers)
        self.delivery_limit = delivery_limit
        self.lock = threading.Condition()
        self.ready: deque[_Entry] = deque()
        self.taken: dict[int, _Entry] = {}  # by worker index: delivered, not acknowledged
        self.results: deque[Result] = deque()
        self.unsettled: list[Result] = []  # handed to the coordinator, not settled yet
        self.lost: list[ItemError] = []
        self.serving: _Serving | None = None
        self.broken: Exception | None = None  # what a worker thread died of, not by a test
        self.rules: dict[str, list[_Rule]] = {}
        self.held: list[Match] = []
        #: for tests to look at: every delivery to a worker (its chunk and earlier deliveries)
        #: and every result published (``chunk`` as it was run; a duplicate twice), in order
        self.deliveries: list[tuple[Chunk, int]] = []
        self.published: list[Result] = []
        #: called in the worker thread after each publish (tests order things from there)
        self.on_publish: list[Callable[[Sequence[Result]], None]] = []

    # -- test hooks ------------------------------------------------------------------------
    def _add(self, kind: str, rule: _Rule) -> None:
        with self.lock:
            self.rules.setdefault(kind, []).append(rule)

    def _applies(self, kind: str, chunk: Chunk, earlier: int) -> _Rule | None:
        return next((r for r in self.rules.get(kind, ()) if r.takes(chunk, earlier)), None)

    def kill(self, at: Literal["receive", "ack"], match: Match, times: int | None = 1) -> None:
        """Kill the worker of a matching message ``at`` "receive" (as its chunks start: mid
        run, nothing published) or at "ack" (after it published, before it acknowledged)."""
        self._add(f"kill-{at}", _Rule(match, times))

    def drop(self, match: Match, times: int | None = 1) -> None:
        """Lose the results of a matching message on their way; unconfirmed, the worker gives
        the message back instead of acknowledging it, and it is delivered again."""
        self._add("drop", _Rule(match, times))

    def duplicate(self, match: Match, times: int | None = 1) -> None:
        """Deliver the results of a matching message to the coordinator twice."""
        self._add("duplicate", _Rule(match, times))

    def replay(self, match: Match, times: int | None = 1) -> None:
        """Queue a matching message once more after it was acknowledged."""
        self._add("replay", _Rule(match, times))

    def fail(self, match: Match, why: str, times: int | None = 1) -> None:
        """Fail a matching message's chunks as a whole (as an op that raised) with ``why``."""
        self._add("fail", _Rule(match, times, why))

    def hold(self, match: Match) -> None:
        """Deliver no matching message until :meth:`release`."""
        with self.lock:
            self.held.append(match)

    def release(self, match: Match | None = None) -> None:
        """Deliver what ``match`` held back (None: everything held)."""
        with self.lock:
            self.held = [] if match is None else [m for m in self.held if m is not match]
            self.lock.notify_all()

    # -- the workers' side -----------------------------------------------------------------
    def serve(self, spec: PassSpec, key: bytes) -> None:
        """Start the worker threads of pass ``spec``."""
        with self.lock:
            self.serving = _Serving(spec, key)
            for index in range(self.size):
                self._spawn(self.serving, index)

    def _spawn(self, serving: _Serving, index: int) -> None:
        thread = threading.Thread(target=self._worker, args=(serving, index), daemon=True,
                                  name=f"fsclone-memory-{index}")
        serving.threads[index] = thread
        thread.start()

    def _worker(self, serving: _Serving, index: int) -> None:
        runner = ChunkRunner(serving.spec, worker_name(f"memory{index}"), serving.key)
        try:
            work(_Worker(self, serving, index, runner))
        except WorkerKilled:
            with self.lock:
                entry = self.taken.pop(index, None)
                if entry is not None:
                    self._again(entry)
                if not serving.stopping:
                    self._spawn(serving, index)  # as a supervisor starts another process
        except Exception as exc:  # a bug: fail the pass rather than leave it waiting
            with self.lock:
                self.broken = exc
                self.lock.notify_all()
            raise
        finally:
            runner.close()

    def stop_workers(self) -> None:
        """Stop the worker threads once each is done with its message in hand."""
        with self.lock:
            serving, self.serving = self.serving, None
            if serving is None:
                return
            serving.stopping = True
            self.lock.notify_all()
        while serving.threads:
            with self.lock:
                threads = list(serving.threads.values())
                serving.threads.clear()
            for thread in threads:
                thread.join()

    def _deliverable(self) -> _Entry | None:
        for entry in self.ready:
            if not any(match(entry.chunk, entry.earlier) for match in self.held):
                self.ready.remove(entry)
                return entry
        return None

    def _again(self, entry: _Entry) -> None:
        """A message taken and not acknowledged: delivered again, or dead-lettered once it was
        delivered too often."""
        entry.earlier += 1
        entry.unconfirmed = False
        if entry.earlier > self.delivery_limit:
            self._dead(entry.chunk, f"delivered {entry.earlier} times, its worker died or gave "
                                    "it up each time", entry.earlier)
        else:
            self.ready.append(entry)
        self.lock.notify_all()

    def _dead(self, chunk: Chunk, why: str, tries: int) -> None:
        """A dead-lettered message: its chunk fails (the coordinator retries or lists it),
        counting every delivery as a try, as the amqp transport's does."""
        failed = replace(chunk, attempt=chunk.attempt + tries - 1)
        self.results.append(Result(chunk=failed, failed=f"dead-lettered: {why}"))

    # -- the coordinator's side ------------------------------------------------------------
    def purge(self) -> None:
        """Drop the queued work (a resuming coordinator submits what is outstanding again)."""
        with self.lock:
            self.ready.clear()

    def take_results(self, timeout: float,
                     stop: Callable[[Sequence[Result]], bool]) -> list[Result]:
        """The results queued, waiting up to ``timeout`` for one; ``stop`` (a test's) may
        stop the coordinator instead when it sees them (CoordinatorKilled)."""
        with self.lock:
            if not self.results and not self.lost:
                self.lock.wait_for(lambda: self.results or self.lost or self.broken, timeout)
            if self.broken is not None:
                raise TransportError(f"a worker thread failed: {self.broken!r}")
            if stop(self.results):
                raise CoordinatorKilled()
            if not self.results and not self.lost and self._stuck():
                raise TransportError(f"nothing can move: no worker busy, {len(self.ready)} "
                                     "messages queued, all held")
            results = list(self.results)
            self.results.clear()
            self.unsettled.extend(results)
            return results

    def _stuck(self) -> bool:
        """Whether no result can come: nothing taken, and every queued message held (or none
        queued, which would be a message lost)."""
        return not self.taken and all(
            any(match(e.chunk, e.earlier) for match in self.held) for e in self.ready)

    def settle(self) -> None:
        with self.lock:
            self.unsettled.clear()

    def take_back(self) -> None:
        """Results handed out and never settled go back to the queue (a coordinator that
        stopped): the next coordinator gets them, and ignores those it has applied."""
        with self.lock:
            self.results.extendleft(reversed(self.unsettled))
            self.unsettled.clear()


class _Worker(Delivery):
    """One worker thread's deliveries."""

    def __init__(self, broker: MemoryBroker, serving: _Serving, index: int,
                 runner: ChunkRunner) -> None:
        self.broker, self.serving, self.index, self.runner = broker, serving, index, runner

    def receive(self) -> Message | None:
        broker = self.broker
        with broker.lock:
            while not self.serving.stopping and (entry := broker._deliverable()) is None:
                broker.lock.wait()
            if self.serving.stopping:
                return None
            assert entry is not None
            broker.taken[self.index] = entry
            broker.deliveries.append((entry.chunk, entry.earlier))
            if broker._applies("kill-receive", entry.chunk, entry.earlier):
                raise WorkerKilled()
            rule = broker._applies("fail", entry.chunk, entry.earlier)
        runner = self.runner if rule is None else _Failing(self.runner, rule.why)
        return Message((entry.chunk,), runner, entry.earlier, entry)

    def publish(self, message: Message, results: Sequence[Result]) -> None:
        broker, entry = self.broker, message.handle
        with broker.lock:
            if broker._applies("drop", entry.chunk, entry.earlier):
                entry.unconfirmed = True
                return
            copies = 2 if broker._applies("duplicate", entry.chunk, entry.earlier) else 1
            for _ in range(copies):
                broker.results.extend(results)
                broker.published.extend(results)
            broker.lock.notify_all()
        for hook in broker.on_publish:
            hook(results)

    def ack(self, message: Message) -> None:
        broker = self.broker
        with broker.lock:
            entry = broker.taken[self.index]
            if not entry.unconfirmed and broker._applies("kill-ack", entry.chunk, entry.earlier):
                raise WorkerKilled()  # the message stays taken: delivered again
            del broker.taken[self.index]
            if entry.unconfirmed:
                broker._again(entry)
            elif broker._applies("replay", entry.chunk, entry.earlier):
                broker._again(_Entry(entry.chunk, entry.earlier))

    def reject(self, message: Message, why: str) -> None:
        broker = self.broker
        with broker.lock:
            entry = broker.taken.pop(self.index)
            chunk = entry.chunk
            broker.lost.append(ItemError(chunk.subject, chunk.op, 0,
                                         f"work message dead-lettered: a worker refused it: "
                                         f"{why}"))
            broker._dead(chunk, f"a worker refused it: {why}", 1)
            broker.lock.notify_all()


class _Failing:
    """A runner whose chunks fail as a whole (a test's :meth:`MemoryBroker.fail`)."""

    def __init__(self, runner: ChunkRunner, why: str) -> None:
        self.runner, self.why, self.name = runner, why, runner.name

    def admit(self, chunk: Chunk) -> None:
        self.runner.admit(chunk)

    def run(self, chunk: Chunk) -> Result:
        return Result(chunk=chunk, failed=self.why, worker=self.name)


class MemoryTransport(Transport):
    """The coordinator's side, on ``broker`` (a new one of one worker thread by default)."""

    def __init__(self, broker: MemoryBroker | None = None,
                 interrupt: Callable[[Sequence[Result]], bool] = lambda queued: False) -> None:
        self.broker = broker or MemoryBroker()
        #: a test's way to stop the coordinator at a poll, given the results queued for it
        #: (left there, for the next coordinator)
        self.interrupt = interrupt

    def start(self, spec: PassSpec) -> None:
        self.broker.purge()
        self.broker.serve(spec, self.key)

    def submit(self, chunks: Iterable[Chunk]) -> None:
        broker = self.broker
        with broker.lock:
            broker.ready.extend(_Entry(chunk) for chunk in chunks)
            broker.lock.notify_all()

    def poll(self, timeout: float) -> list[Result]:
        return self.broker.take_results(timeout, self.interrupt)

    def lost(self) -> list[ItemError]:
        with self.broker.lock:
            lost, self.broker.lost = self.broker.lost, []
        return lost

    def settle(self) -> None:
        self.broker.settle()

    def depth(self) -> int:
        return len(self.broker.ready)

    def stop(self) -> None:
        self.broker.stop_workers()
        self.broker.take_back()
