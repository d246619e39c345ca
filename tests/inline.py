"""A transport that runs chunks in the test's own process, one at a time, through the real
ChunkRunner: deterministic tests of the coordinator's rules (barriers, retries, failures)
without forking workers. ``sabotage`` can fail a chunk as a whole, as a crashing op would."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable

from fsclone.chunk import Chunk, Result
from fsclone.engine.worker import ChunkRunner
from fsclone.spec import PassSpec
from fsclone.transport.base import Transport


class InlineTransport(Transport):
    def __init__(self, sabotage: Callable[[Chunk], str | None] = lambda chunk: None) -> None:
        self.sabotage = sabotage
        self.queue: deque[Chunk] = deque()
        self.runner: ChunkRunner | None = None
        #: every chunk run, in order, for the test to look at
        self.ran: list[Chunk] = []

    def start(self, spec: PassSpec) -> None:
        self.runner = ChunkRunner(spec, "inline.0", self.key)

    def submit(self, chunks: Iterable[Chunk]) -> None:
        self.queue.extend(chunks)

    def poll(self, timeout: float) -> list[Result]:
        if not self.queue or self.runner is None:
            return []
        chunk = self.queue.popleft()
        self.ran.append(chunk)
        failed = self.sabotage(chunk)
        if failed:
            return [Result(chunk=chunk, failed=failed, worker="inline.0")]
        return [self.runner.run(chunk)]

    def stop(self) -> None:
        if self.runner is not None:
            self.runner.close()
            self.runner = None
