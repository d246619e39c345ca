"""The worker's side of the AMQP transport: one process, one connection, one message at a time.

A worker hears on ``fsclone.control`` which passes are active, opens each pass's roots from its
spec, and consumes the pass's chunk queue with a prefetch of one message. The engine's worker
loop runs the messages in a chunk thread while this process's main thread keeps pika's I/O
loop going and does all the talking to the broker (see :mod:`.handoff`). A message is
acknowledged only after its results are published and confirmed. A message that is not
valid JSON of chunks, or holds a chunk its pass's worker may not run (see ChunkRunner.admit),
goes to the dead-letter queue with the reason, never crashing us.

A worker serves only passes whose announcement is signed with the site's key and whose roots
its node's ``ALLOWED_ROOTS`` holds (see :mod:`.allowed`); it says once, in one line, why it
ignores any other. Its result messages are signed with the same key.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
import time
from collections import deque
from typing import Any

import pika
import pika.exceptions as px
from pika.adapters.blocking_connection import BlockingChannel

from fsclone.config import Config
from fsclone.engine.worker import work, worker_name
from fsclone.errors import MessageError
from fsclone.signing import Signer
from fsclone.transport.amqp import link, wire
from fsclone.transport.amqp.allowed import Roots
from fsclone.transport.amqp.handoff import Handoff, Received
from fsclone.transport.amqp.link import BrokerAuthError
from fsclone.transport.amqp.served import Passes, Served
from fsclone.transport.amqp.settings import BrokerSettings, broker_settings, signing_key
from fsclone.transport.base import Message
from fsclone.transport.pool import run_pool

log = logging.getLogger("fsclone.amqp")
#: exit code of a worker process that lost the broker in the middle of a chunk (EX_TEMPFAIL)
LOST_MID_CHUNK = 75


class Consumer:
    """Serves every pass announced on the broker until asked to stop, then drains: the chunk
    in hand is finished, the rest of its message goes back to the queue."""

    def __init__(self, settings: BrokerSettings, name: str, key: bytes, allowed: Roots) -> None:
        self.settings = settings
        self.name = name
        self.signer = Signer(key)
        self.conn: pika.BlockingConnection | None = None
        self.ch: BlockingChannel | None = None
        self.channel = 0
        self.passes = Passes(name, key, allowed)
        self.waiting: deque[Received] = deque()
        self.stopping = threading.Event()
        self.handoff = Handoff(self.stopping, self._wake)
        self.job: Message | None = None  # in the chunk thread's hands, not acknowledged yet
        self.parent = os.getppid()

    def stop(self) -> None:
        """Drain and exit (from a signal handler: only sets a flag)."""
        self.stopping.set()

    def _drain(self) -> None:
        log.info("draining: finishing the chunk in hand, giving back the rest")
        for served in list(self.passes.served.values()):
            self._release(served)
        while self.waiting:
            self._give_back(self.waiting.popleft())

    def run(self) -> int:
        """Serve until stopped; 0 after a clean drain, 2 when the broker refuses us."""
        threading.Thread(target=work, args=(self.handoff,), daemon=True,
                         name="fsclone-chunk").start()
        try:
            while not self._finished():
                self.conn = link.reconnect(self.settings, self.name, self._finished)
                if self.conn is None:
                    break
                try:
                    self._serve()
                except px.AMQPError as exc:
                    if not link.is_lost(exc):
                        raise
                    self._lost(exc)
        except BrokerAuthError as exc:
            log.error("%s", exc)
            return 2
        finally:
            self.handoff.hand(None)
            self._close()
        return 0

    def _lost(self, exc: px.AMQPError) -> None:
        """The connection is gone, and with it our hold on the message in hand: the broker
        gives it to another worker. Running it on here, side by side with that one, is unsafe
        (a later attempt removes an earlier one's temp files), so a worker in the middle of
        a chunk leaves at once; its supervisor starts a fresh one."""
        if self.job is not None and not self.job.handle.answered.is_set():
            log.error("lost the broker at %s (%s) while running a chunk: leaving", self.settings,
                      link.describe(exc))
            os._exit(LOST_MID_CHUNK)
        log.warning("lost the broker at %s (%s); reconnecting", self.settings,
                    link.describe(exc))
        self.ch = None

    def _finished(self) -> bool:
        return self.stopping.is_set() and self.job is None

    # -- one connection --------------------------------------------------------------------
    def _serve(self) -> None:
        assert self.conn is not None
        ch = self.conn.channel()
        ch.confirm_delivery()
        ch.basic_qos(prefetch_count=1)
        ch.exchange_declare(wire.CONTROL_EXCHANGE, "fanout", durable=True)
        ttl = {"x-message-ttl": int(wire.ANNOUNCE_INTERVAL * 1000)}
        control = ch.queue_declare("", exclusive=True, auto_delete=True, arguments=ttl)
        ch.queue_bind(control.method.queue, wire.CONTROL_EXCHANGE)
        ch.basic_consume(control.method.queue, self._on_announce, auto_ack=True)
        ch.add_on_cancel_callback(self._on_cancel)
        self.ch, self.channel = ch, self.channel + 1
        for served in self.passes.served.values():
            served.tag = None  # consumers die with the connection; announcements renew them
        self.waiting.clear()  # so do unacknowledged deliveries: the broker gives them out again
        drained = False
        while not self._finished():
            if os.getppid() != self.parent:
                self.stop()  # our supervisor is gone: drain rather than work unwatched
            if self.stopping.is_set() and not drained:
                self._drain()
                drained = True
            self._flush()
            self._expire()
            self._start()
            self.conn.process_data_events(time_limit=1.0)
        self._flush()

    def _close(self) -> None:
        for served in list(self.passes.served.values()):
            self._drop(served)
        if self.conn is not None and self.conn.is_open:
            try:
                self.conn.close()
            except px.AMQPError as exc:
                log.debug("closing: %s", link.describe(exc))

    # -- passes ----------------------------------------------------------------------------
    def _on_announce(self, ch: BlockingChannel, method: Any, properties: Any,
                     body: bytes) -> None:
        try:
            event, spec = wire.decode_announcement(body, self.signer)
        except MessageError as exc:
            self.passes.tell(f"ignored an announcement: {exc}")
            return
        served = self.passes.served.get(spec.id)
        if event == wire.ENDED:
            if served is not None:
                log.info("pass %s ended", spec.id)
                self._drop(served)
            return
        if self.stopping.is_set() or spec.id in self.passes.refused:
            return
        if served is None:
            served = self.passes.open(spec)
        if served is not None:
            served.seen = time.monotonic()
            if served.tag is None:
                self._consume(served)

    def _consume(self, served: Served) -> None:
        """Take the pass's chunks, if its queue still exists (a late announcement may outlive
        the pass): checked on a channel of its own, since a missing queue closes it."""
        assert self.conn is not None and self.ch is not None
        probe = self.conn.channel()
        try:
            probe.queue_declare(served.queues.chunks, passive=True)
        except px.ChannelClosedByBroker:
            self._drop(served)
            return
        probe.close()
        served.tag = self.ch.basic_consume(served.queues.chunks,
                                           functools.partial(self._on_chunk, served))

    def _busy(self, served: Served) -> bool:
        return self.job is not None and self.job.handle.served is served

    def _release(self, served: Served) -> None:
        """Stop taking the pass's chunks, unless we hold one: then once it is done. A
        resuming coordinator waits for the consumers of its queue to go before it sends its
        chunks again, so no chunk ever runs twice side by side."""
        if served.tag is not None and not self._busy(served):
            if self.ch is not None and self.ch.is_open:
                self.ch.basic_cancel(served.tag)
            served.tag = None

    def _drop(self, served: Served) -> None:
        """Stop serving a pass; its consumer and roots go once no chunk of it runs."""
        served.ended = True
        self.passes.served.pop(served.spec.id, None)
        self._release(served)
        if not self._busy(served):
            served.runner.close()

    def _expire(self) -> None:
        """A pass not announced for a lease is dropped: its coordinator is gone, and a worker
        must not write to a target that nobody coordinates (a new pass may be running)."""
        now = time.monotonic()
        for served in list(self.passes.served.values()):
            if now - served.seen > wire.LEASE:
                log.info("pass %s: no word from its coordinator for %.0f s; left", served.spec.id,
                         now - served.seen)
                self._drop(served)

    def _on_cancel(self, method: Any) -> None:
        """The broker cancelled a consumer: its queue was deleted, the pass is over."""
        for served in list(self.passes.served.values()):
            if served.tag == method.method.consumer_tag:
                served.tag = None
                self._drop(served)

    # -- messages ----------------------------------------------------------------------------
    def _on_chunk(self, served: Served, ch: BlockingChannel, method: Any,
                  properties: pika.BasicProperties, body: bytes) -> None:
        earlier = int((properties.headers or {}).get("x-delivery-count", 0))
        self.waiting.append(Received(served, method.delivery_tag, self.channel, body, earlier))

    def _start(self) -> None:
        """Hand the chunk thread the next message, if it is idle."""
        while self.job is None and self.waiting and not self.stopping.is_set():
            delivery = self.waiting.popleft()
            if delivery.served.ended:
                self._give_back(delivery)
                continue
            try:
                chunks = wire.decode_chunks(delivery.body)
            except MessageError as exc:
                self._dead_letter(delivery, str(exc))
                self._ack(delivery)
                continue
            # A redelivered chunk is marked redo but keeps its attempt: the delivery count also
            # counts chunks given back unstarted (a draining worker), which are no runs; the
            # broker's delivery limit bounds the deaths.
            self.job = Message(chunks, delivery.served.runner, delivery.earlier, delivery)
            self.handoff.hand(self.job)

    def _wake(self) -> None:
        """(chunk thread) Wake the I/O loop to publish an answer."""
        conn = self.conn
        if conn is not None:
            with contextlib.suppress(px.AMQPError):  # the loop wakes up within a second anyway
                conn.add_callback_threadsafe(lambda: None)

    def _flush(self) -> None:
        """Publish the chunk thread's answer (results and what it did not run, or the refused
        message to the dead letters), then acknowledge."""
        if self.job is None or not self.job.handle.answered.is_set():
            return
        delivery: Received = self.job.handle
        served = delivery.served
        if delivery.refused is None:
            body = wire.encode_results(delivery.results)
            self._publish(served.queues.results, body, {
                wire.SIGNATURE_HEADER: self.signer.mac(wire.results_purpose(served.spec.id),
                                                       body)})
            if delivery.rest:
                self._publish(served.queues.chunks, wire.encode_chunks(delivery.rest))
        else:
            self._dead_letter(delivery, delivery.refused)
        self.job = None
        if served.ended or self.stopping.is_set():
            self._release(served)  # before the ack, which would bring the next message
        self._ack(delivery)
        if served.ended:
            served.runner.close()

    def _publish(self, queue: str, body: bytes, headers: dict[str, str] | None = None) -> None:
        assert self.ch is not None
        props = link.PERSISTENT if headers is None else \
            pika.BasicProperties(delivery_mode=2, content_type="application/json",
                                 headers=headers)
        try:
            self.ch.basic_publish("", queue, body, props, mandatory=True)
        except px.UnroutableError:
            log.info("%s is gone (its pass is over); message dropped", queue)

    def _ack(self, delivery: Received) -> None:
        """Acknowledge on the channel it came from; on a newer channel the broker has already
        taken it back (and will give it out again: duplicates are harmless)."""
        if delivery.channel == self.channel and self.ch is not None:
            self.ch.basic_ack(delivery.tag)

    def _give_back(self, delivery: Received) -> None:
        if delivery.channel == self.channel and self.ch is not None:
            self.ch.basic_nack(delivery.tag, requeue=True)

    def _dead_letter(self, delivery: Received, why: str) -> None:
        """A malformed message: to the pass's dead-letter queue, with the reason, for its
        coordinator to report (the caller acknowledges it)."""
        queues = delivery.served.queues
        log.error("pass %s: malformed or refused work message moved to %s: %s",
                  delivery.served.spec.id, queues.dead, why)
        self._publish(queues.dead, delivery.body, {wire.REASON_HEADER: why})


def serve(cfg: Config) -> int:
    """``fsclone worker``: check the broker once (exit 2 at once if it refuses us or is not
    there), then run ``cfg.workers`` consumer processes until SIGTERM. They serve the passes
    whose roots ``ALLOWED_ROOTS`` holds, none when it is empty (said at start)."""
    settings, key = broker_settings(cfg), signing_key(cfg)
    link.check(settings)
    log.info("serving the passes of %s with %d processes", settings, cfg.workers)
    if not cfg.allowed_roots:
        log.warning("ALLOWED_ROOTS is empty: no pass will be served until it names the "
                    "(SRC, DST) roots this node may serve")
    return run_pool(cfg.workers, lambda index: Consumer(settings, worker_name(index), key,
                                                        cfg.allowed_roots))
