"""Bookkeeping for transports that push chunks to their own workers (local, mpi)."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from fsclone.chunk import Chunk, Result
from fsclone.transport.base import Delivery, Message


class InFlight:
    """Chunks waiting for a worker, and the chunks each worker holds.

    A worker holds at most ``prefetch`` chunks: enough that it never waits for its next one, few
    enough that a slow worker does not hoard work that others could do. The chunks of a worker
    that is lost come back as failed results, so the coordinator retries them like any failure.
    """

    def __init__(self, prefetch: int) -> None:
        self.prefetch = prefetch
        self.pending: deque[Chunk] = deque()
        self.held: dict[int, dict[str, Chunk]] = {}

    def add(self, chunks: Iterable[Chunk]) -> None:
        self.pending.extend(chunks)

    def assign(self, workers: Iterable[int]) -> list[tuple[int, Chunk]]:
        """Hand pending chunks to ``workers`` up to ``prefetch`` each; the caller sends them."""
        sends = []
        for worker in workers:
            held = self.held.setdefault(worker, {})
            while self.pending and len(held) < self.prefetch:
                chunk = self.pending.popleft()
                held[chunk.id] = chunk
                sends.append((worker, chunk))
        return sends

    def done(self, worker: int, chunk_id: str) -> None:
        self.held.get(worker, {}).pop(chunk_id, None)

    def lost(self, worker: int, why: str) -> list[Result]:
        """Failed results for every chunk ``worker`` held, which it no longer holds."""
        return [Result(chunk=c, failed=why) for c in self.held.pop(worker, {}).values()]

    def depth(self) -> int:
        return len(self.pending)


class Pushed(Delivery):
    """A worker's side of a transport that pushes chunks to its own workers, one a message: a
    result is the answer (nothing to acknowledge: the chunks of a worker that is lost come
    back failed, see :meth:`InFlight.lost`), and a refused chunk is answered failed, for the
    coordinator to retry and then list."""

    def ack(self, message: Message) -> None:
        return None

    def reject(self, message: Message, why: str) -> None:
        self.publish(message, [Result(chunk=c, failed=f"refused: {why}",
                                      worker=message.runner.name) for c in message.chunks])
