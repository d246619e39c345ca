"""Between a consumer's two threads: pika's BlockingConnection is not thread-safe, and its I/O
loop must keep running (heartbeats) while a chunk runs, so the consumer's main thread talks to
the broker and a chunk thread runs the engine's worker loop over :class:`Handoff`. The I/O
thread hands it one message at a time; the loop's answer (results and the chunks given back,
or why it refused the message) is kept on the message's :class:`Received` record, and the I/O
thread publishes it, then acknowledges, once the loop has acknowledged."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from fsclone.chunk import Chunk, Result
from fsclone.transport.amqp.served import Served
from fsclone.transport.base import Delivery, Message


@dataclass
class Received:
    """One delivery from the broker, and the chunk thread's answer to it."""

    served: Served
    tag: int
    channel: int  # which of our channels it came on: tags die with their channel
    body: bytes
    earlier: int  # deliveries of this message before this one
    results: Sequence[Result] = ()
    rest: Sequence[Chunk] = ()  # not started (draining): to queue again
    refused: str | None = None  # why the loop rejected it: to the dead-letter queue
    answered: threading.Event = field(default_factory=threading.Event)


class Handoff(Delivery):
    """The chunk thread's side. ``wake`` makes the I/O loop look at once (it looks every
    second anyway)."""

    def __init__(self, stopping: threading.Event, wake: Callable[[], None]) -> None:
        self.stopping = stopping
        self.wake = wake
        self.inbox: queue.SimpleQueue[Message | None] = queue.SimpleQueue()

    def hand(self, message: Message | None) -> None:
        """(I/O thread) The next message for the loop; None ends it."""
        self.inbox.put(message)

    def receive(self) -> Message | None:
        return self.inbox.get()

    def draining(self) -> bool:
        return self.stopping.is_set()

    def publish(self, message: Message, results: Sequence[Result]) -> None:
        message.handle.results = results

    def give_back(self, message: Message, chunks: Sequence[Chunk]) -> None:
        message.handle.rest = chunks

    def ack(self, message: Message) -> None:
        message.handle.answered.set()
        self.wake()

    def reject(self, message: Message, why: str) -> None:
        message.handle.refused = why
        self.ack(message)
