"""The coordinator's side of the AMQP transport.

Per pass, three durable quorum queues (see :class:`~.wire.Queues`): chunks (work messages,
with a delivery limit and a dead-letter queue), results (consumed by this coordinator only),
dead (dead-lettered work). Work is published persistent with publisher confirms; results are
acknowledged in :meth:`AmqpTransport.settle`, after the coordinator committed them, so a
coordinator killed at any moment loses nothing: unacknowledged results are delivered again
to the next one, which ignores those it already has. A lost connection (broker restart) is
re-established with backoff and whatever was being published is published again.

Announcements are signed with the site's key, and a result message counts only with a
worker's signature (fsclone.signing): a broker account can neither start a pass nor answer
for a worker. A work message a worker refused (dead-lettered with its reason) is listed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import pika
import pika.exceptions as px
from pika.adapters.blocking_connection import BlockingChannel

from fsclone.chunk import Chunk, ItemError, Result
from fsclone.errors import LockedError, MessageError, TransportError
from fsclone.signing import Signer
from fsclone.spec import PassSpec
from fsclone.transport.amqp import link, wire
from fsclone.transport.amqp.settings import BrokerSettings
from fsclone.transport.base import Transport

log = logging.getLogger("fsclone.amqp")
T = TypeVar("T")

#: a work message given back this many times (its workers died, or were killed while on it)
#: is dead-lettered: 5 deliveries in all
DELIVERY_LIMIT = 4
#: unused pass queues (a pass never resumed) vanish after two weeks
EXPIRES_MS = 14 * 24 * 3600 * 1000
#: result messages in the coordinator's hands before it settles them
RESULT_PREFETCH = 256
#: how long a reconnecting coordinator waits for the broker to drop its old connection's
#: target guard (a connection that died without closing lasts up to two heartbeats)
GUARD_GRACE = 3 * link.HEARTBEAT


def queue_arguments(queues: wire.Queues, name: str) -> dict[str, Any]:
    args: dict[str, Any] = {"x-queue-type": "quorum", "x-expires": EXPIRES_MS}
    if name == queues.chunks:
        args.update({"x-delivery-limit": DELIVERY_LIMIT, "x-dead-letter-exchange": "",
                     "x-dead-letter-routing-key": queues.dead,
                     "x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"})
    return args


def _dead_reason(properties: pika.BasicProperties) -> tuple[str, int]:
    """Why a work message was dead-lettered, and how many times it had been delivered."""
    headers = properties.headers or {}
    if wire.REASON_HEADER in headers:
        return f"a worker refused it: {headers[wire.REASON_HEADER]}", 1
    reason = headers.get("x-first-death-reason", "unknown")
    if reason == "delivery_limit":
        return (f"delivered {DELIVERY_LIMIT + 1} times, its worker died or gave it up each time",
                DELIVERY_LIMIT + 1)
    return str(reason), 1


class AmqpTransport(Transport):
    """Chunks out through a RabbitMQ broker to ``fsclone worker`` processes anywhere."""

    def __init__(self, settings: BrokerSettings, key: bytes) -> None:
        self.settings = settings
        self.key = key
        self.signer = Signer(key)
        self.conn: pika.BlockingConnection | None = None
        self.ch: BlockingChannel | None = None
        self.spec: PassSpec | None = None
        self.queues: wire.Queues | None = None
        self._results: list[Result] = []
        self._lost: list[ItemError] = []
        self._split: list[tuple[int, list[Chunk]]] = []  # dead batches to send again one by one
        self._tags: list[int] = []  # deliveries received, acknowledged by settle()
        self._settle: list[int] = []  # deliveries handed to the coordinator, not yet settled
        self._in_flight = 0
        self._consumers = 0  # worker processes taking our chunks, as last seen
        self._consumers_at = 0.0
        self._announced = 0.0
        #: messages this coordinator put on or took off the broker, by kind (for operators
        #: and the bench): work, result, dead, announcement
        self.carried: Counter[str] = Counter()

    # -- the Transport seam --------------------------------------------------------------
    def connect(self) -> None:
        """Reach the broker now, so bad credentials fail before anything is written."""
        if self.conn is None or self.conn.is_closed:
            self.conn = link.connect(self.settings, "fsclone coordinator")

    def start(self, spec: PassSpec) -> None:
        self.spec, self.queues = spec, wire.Queues.of(spec.id)
        self.connect()
        self._retrying(lambda: self._open(purge=True))

    def submit(self, chunks: Iterable[Chunk]) -> None:
        batch = list(chunks)
        if batch:
            self._retrying(lambda: self._publish(batch))
            self._in_flight += len(batch)

    def poll(self, timeout: float) -> list[Result]:
        self._retrying(lambda: self._receive(time.monotonic() + timeout))
        results, self._results = self._results, []
        self._settle.extend(self._tags)
        self._tags = []
        self._in_flight = max(0, self._in_flight - len(results))
        return results

    def lost(self) -> list[ItemError]:
        lost, self._lost = self._lost, []
        return lost

    def settle(self) -> None:
        tags, self._settle = self._settle, []
        try:
            for tag in tags:
                self._channel().basic_ack(tag)
        except px.AMQPError as exc:
            # Unacknowledged results come again after the reconnection: the coordinator
            # ignores them as duplicates.
            self._recover(exc)

    def depth(self) -> int:
        """Chunks sent and not answered yet (queued or being worked on)."""
        return self._in_flight

    def completed(self) -> None:
        """The pass is done: delete its queues, but keep a dead-letter queue that still holds
        messages (they arrived after the end) for the operator, and say so."""
        assert self.queues is not None
        queues = self.queues

        def delete() -> None:
            ch = self._channel()
            ch.queue_delete(queues.chunks)
            ch.queue_delete(queues.results)
            left = ch.queue_declare(queues.dead, passive=True).method.message_count
            if left:
                log.warning("%d messages arrived in %s after the pass ended; left there",
                            left, queues.dead)
            else:
                ch.queue_delete(queues.dead)

        self._retrying(delete)

    def stop(self) -> None:
        """Tell the workers the pass is over (they stop taking its chunks), then disconnect.
        The queues stay (unless :meth:`completed` deleted them) for a resume."""
        if self.conn is None or self.conn.is_closed:
            return
        log.info("messages through the broker: %s", dict(self.carried))
        try:
            if self.spec is not None and self.ch is not None:
                self._announce(wire.ENDED)
            self.conn.close()
        except px.AMQPError as exc:
            log.debug("closing the broker connection: %s", link.describe(exc))
        self.conn = self.ch = None

    # -- connection and channel ----------------------------------------------------------
    def _channel(self) -> BlockingChannel:
        if self.ch is None:
            raise TransportError("the amqp transport has no open channel")
        return self.ch

    def _open(self, purge: bool) -> None:
        """Guard the target, declare the pass's queues, consume results and dead letters."""
        assert self.conn is not None and self.spec is not None and self.queues is not None
        ch = self.conn.channel()
        try:
            ch.queue_declare(wire.guard_queue(self.spec.dst), exclusive=True)
        except px.ChannelClosedByBroker as exc:
            if exc.reply_code != 405:
                raise
            raise LockedError(f"another coordinator serves {self.spec.dst} through the broker "
                              f"at {self.settings} (a dead one is forgotten within "
                              f"{2 * link.HEARTBEAT} s)") from None
        ch.confirm_delivery()
        ch.exchange_declare(wire.CONTROL_EXCHANGE, "fanout", durable=True)
        q = self.queues
        for name in (q.dead, q.results, q.chunks):
            ch.queue_declare(name, durable=True, arguments=queue_arguments(q, name))
        if purge:  # everything outstanding is submitted again: old copies would be done twice
            self._await_old_workers(ch)
            ch.queue_purge(q.chunks)
        ch.basic_qos(prefetch_count=RESULT_PREFETCH)
        ch.basic_consume(q.results, self._on_result)
        ch.basic_consume(q.dead, self._on_dead)
        self.ch = ch
        self._results, self._lost, self._split, self._tags, self._settle = [], [], [], [], []
        self._announce(wire.ACTIVE)

    def _await_old_workers(self, ch: BlockingChannel) -> None:
        """On a resume, workers may still hold chunks they got from the previous coordinator.
        Sending those chunks again while they run would run one chunk twice side by side
        (unsafe: a later attempt removes an earlier one's temp files), so wait for them to
        let go: a worker stops consuming a pass once its chunk in hand is done and no
        announcement came for a lease."""
        assert self.conn is not None and self.queues is not None
        noted = False
        while held := ch.queue_declare(self.queues.chunks, passive=True).method.consumer_count:
            if not noted:
                log.warning("waiting for %d workers to finish the chunks they took from the "
                            "previous coordinator of this pass", held)
                noted = True
            self.conn.process_data_events(time_limit=0.5)

    def _retrying(self, step: Callable[[], T]) -> T:
        """Run ``step``; if the connection is lost, reconnect (with backoff, for as long as it
        takes) and run it again: every step here is safe to repeat."""
        while True:
            try:
                return step()
            except px.AMQPError as exc:
                self._recover(exc)

    def _recover(self, exc: px.AMQPError) -> None:
        """Reconnect after a lost connection and set everything up again; any other broker
        error is fatal for the pass (which stays resumable)."""
        self._fatal_unless_lost(exc)
        log.warning("lost the broker at %s (%s); reconnecting", self.settings, link.describe(exc))
        deadline = time.monotonic() + GUARD_GRACE
        while True:
            self.ch = None
            conn = link.reconnect(self.settings, "fsclone coordinator")
            assert conn is not None  # no stop condition: it waits for the broker
            self.conn = conn
            try:
                self._open(purge=False)
            except LockedError:
                if time.monotonic() > deadline:
                    raise
            except px.AMQPError as again:
                self._fatal_unless_lost(again)
            else:
                log.warning("reconnected to the broker at %s", self.settings)
                return
            with contextlib.suppress(px.AMQPError):
                conn.close()
            time.sleep(1.0)

    def _fatal_unless_lost(self, exc: px.AMQPError) -> None:
        if isinstance(exc, px.UnroutableError | px.NackError):
            raise TransportError(f"the broker at {self.settings} did not take a message "
                                 f"({type(exc).__name__}): were the pass's queues deleted?") \
                from None
        if not link.is_lost(exc):
            raise TransportError(f"broker error at {self.settings}: {link.describe(exc)}") \
                from None

    # -- publishing --------------------------------------------------------------------------
    def _publish(self, chunks: Sequence[Chunk]) -> None:
        assert self.queues is not None
        now = time.monotonic()
        if now - self._consumers_at > 0.2 or not self._consumers:  # workers come and go
            self._consumers = self._channel().queue_declare(
                self.queues.chunks, passive=True).method.consumer_count
            self._consumers_at = now
        for batch in wire.batches(chunks, self._in_flight, self._consumers):
            self._send(batch)
            self._announce_if_due()

    def _send(self, chunks: Sequence[Chunk]) -> None:
        """One work message, persistent and confirmed (mandatory: a missing queue is an
        error, not a silent drop)."""
        assert self.queues is not None
        self._channel().basic_publish("", self.queues.chunks, wire.encode_chunks(chunks),
                                      link.PERSISTENT, mandatory=True)
        self.carried["work"] += 1

    def _announce(self, event: str) -> None:
        assert self.spec is not None
        ttl = str(int(wire.ANNOUNCE_INTERVAL * 1000))
        self._channel().basic_publish(wire.CONTROL_EXCHANGE, "",
                                      wire.encode_announcement(event, self.spec, self.signer),
                                      pika.BasicProperties(expiration=ttl))
        self.carried["announcement"] += 1
        self._announced = time.monotonic()

    def _announce_if_due(self) -> None:
        if time.monotonic() - self._announced >= wire.ANNOUNCE_INTERVAL:
            self._announce(wire.ACTIVE)

    # -- receiving ---------------------------------------------------------------------------
    def _receive(self, deadline: float) -> None:
        assert self.conn is not None
        while not (self._results or self._lost) and (left := deadline - time.monotonic()) > 0:
            self.conn.process_data_events(time_limit=min(left, wire.ANNOUNCE_INTERVAL))
            self._announce_if_due()
            self._resend_split()
        self._announce_if_due()
        self._resend_split()

    def _on_result(self, ch: BlockingChannel, method: Any, properties: Any, body: bytes) -> None:
        self._tags.append(method.delivery_tag)
        self.carried["result"] += 1
        assert self.spec is not None
        signature = (properties.headers or {}).get(wire.SIGNATURE_HEADER)
        if not self.signer.verify(wire.results_purpose(self.spec.id), body, signature):
            self._lost.append(ItemError("", "result", 0, "a result message without a worker's "
                                        f"signature was dropped; it began {body[:60]!r}"))
            return
        try:
            self._results.extend(wire.decode_results(body))
        except MessageError as exc:
            self._lost.append(ItemError("", "result", 0, f"unreadable result message: {exc}"))

    def _on_dead(self, ch: BlockingChannel, method: Any, properties: Any, body: bytes) -> None:
        """A dead-lettered work message. Alone, its chunk fails (the coordinator retries it or
        lists it); a batch is sent again one chunk per message, so that only a chunk that
        really kills its workers is failed."""
        why, tries = _dead_reason(properties)
        self.carried["dead"] += 1
        try:
            chunks = wire.decode_chunks(body)
        except MessageError as exc:
            self._tags.append(method.delivery_tag)
            self._lost.append(ItemError("", "dead-letter", 0,
                                        f"unreadable work message dead-lettered ({why}): {exc}; "
                                        f"it began {body[:60]!r}"))
            return
        if len(chunks) > 1:
            self._split.append((method.delivery_tag, chunks))
            return
        self._tags.append(method.delivery_tag)
        chunk = chunks[0]
        if wire.REASON_HEADER in (properties.headers or {}):
            # listed whether or not the chunk is one of ours (a forged one is never outstanding)
            self._lost.append(ItemError(chunk.subject, chunk.op, 0,
                                        f"work message dead-lettered: {why}"))
        failed = dataclasses.replace(chunk, attempt=chunk.attempt + tries - 1)
        self._results.append(Result(chunk=failed, failed=f"dead-lettered: {why}"))

    def _resend_split(self) -> None:
        while self._split:
            tag, chunks = self._split[0]
            for chunk in chunks:
                self._send([chunk])
            self._channel().basic_ack(tag)
            self._split.pop(0)
