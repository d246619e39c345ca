"""The transport seam: the coordinator knows transports only through :class:`Transport`, the
worker loop only through :class:`Delivery`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from fsclone.chunk import Chunk, ItemError, Result
from fsclone.signing import new_key
from fsclone.spec import PassSpec


class Transport(ABC):
    """Carries chunks out and results back for one pass.

    Delivery is at least once: a chunk whose worker died is delivered again (``attempt`` + 1),
    and the coordinator ignores a second result for a chunk it already finished.
    """

    _key: bytes | None = None

    @property
    def key(self) -> bytes:
        """The secret the coordinator signs planned chunks with and the workers check them
        with (fsclone.signing). By default a random one of this transport's own, which it hands
        its workers (forks, MPI ranks); the amqp transport's is the site's key file."""
        if self._key is None:
            self._key = new_key()
        return self._key

    @key.setter
    def key(self, key: bytes) -> None:
        self._key = key

    @abstractmethod
    def start(self, spec: PassSpec) -> None:
        """Get ready to serve ``spec`` (start local workers, declare queues, ...)."""

    @abstractmethod
    def submit(self, chunks: Iterable[Chunk]) -> None:
        """Queue chunks for the workers."""

    @abstractmethod
    def poll(self, timeout: float) -> list[Result]:
        """Results that arrived, waiting at most ``timeout`` seconds for the first one."""

    def settle(self) -> None:
        """Called after the results returned by :meth:`poll` are durably recorded, so a transport
        with acknowledgements can acknowledge them now. Default: nothing to do."""
        return None

    def lost(self) -> list[ItemError]:
        """Messages the transport had to give up on without a chunk to fail (an unreadable
        dead-lettered message), for the pass's error list: never dropped silently. Called after
        each :meth:`poll`, before the commit that :meth:`settle` follows."""
        return []

    def completed(self) -> None:
        """Called once the pass is done, so a transport that keeps state for a resume (durable
        queues) can release it. Default: nothing to do."""
        return None

    def depth(self) -> int | None:
        """Chunks waiting in the transport, when it can tell (for progress and Graphite)."""
        return None

    def slots(self) -> int:
        """Chunks its workers run at once to cover round trips (threads beyond a process a
        core: fsclone.transport.depth), known before the pass starts: what a few big chunks
        are split to fill (fsclone.engine.changes). 1: none, or not known (workers on a
        broker come and go)."""
        return 1

    @abstractmethod
    def stop(self) -> None:
        """Release workers and connections. Safe to call twice."""


class Runner(Protocol):
    """What runs a pass's chunks in a worker (fsclone.engine.worker.ChunkRunner)."""

    name: str

    def admit(self, chunk: Chunk) -> None: ...

    def run(self, chunk: Chunk) -> Result: ...


@dataclass
class Message:
    """A batch of chunks delivered to a worker, with the runner of their pass. ``earlier`` is
    how many times it was delivered before (and not acknowledged); ``handle`` is the
    delivery's own (a delivery tag, a queue entry)."""

    chunks: Sequence[Chunk]
    runner: Runner
    earlier: int = 0
    handle: Any = None


class Delivery(ABC):
    """The worker's side of a transport: it only delivers messages and carries the answers
    back; the engine's worker loop (fsclone.engine.worker.work) admits, runs, publishes and
    acknowledges, in that order, for every transport."""

    @abstractmethod
    def receive(self) -> Message | None:
        """The next message, waiting for it; None: stop serving."""

    def draining(self) -> bool:
        """Whether to stop after the chunk in hand and give the rest of the message back.
        Default: never (a transport whose messages hold one chunk)."""
        return False

    @abstractmethod
    def publish(self, message: Message, results: Sequence[Result]) -> None:
        """Send the results of the first ``len(results)`` chunks of ``message`` on."""

    def give_back(self, message: Message, chunks: Sequence[Chunk]) -> None:
        """Queue ``chunks``, the part of ``message`` not started, again (only asked while
        :meth:`draining`)."""
        raise NotImplementedError(f"{type(self).__name__} never drains")

    @abstractmethod
    def ack(self, message: Message) -> None:
        """``message`` is answered: the transport may forget it (called after publish)."""

    @abstractmethod
    def reject(self, message: Message, why: str) -> None:
        """``message`` holds a chunk its pass's runner refuses (``why``): none of it runs; it
        is dead-lettered, or answered failed where the transport has no dead letters."""
