"""The worker's side of the AMQP transport: one process, one connection, one message at a time.

A worker hears on ``fsclone.control`` which passes are active, opens each pass's roots from its
spec, and consumes the pass's chunk queue with a prefetch of one message. The chunks of a
message run in a thread while this process's main thread keeps pika's I/O loop going (pika's
BlockingConnection is not thread-safe; heartbeats must flow while a huge file is copied). The
message is acknowledged only after its results are published and confirmed. A message that is
not valid JSON of chunks, or holds a chunk its pass's worker may not run (see
ChunkRunner.admit), goes to the dead-letter queue with the reason, never crashing us.

A worker serves only passes whose announcement is signed with the site's key and whose roots
its node's ``ALLOWED_ROOTS`` holds (see :mod:`.allowed`); it says once, in one line, why it
ignores any other. Its result messages are signed with the same key.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pika
import pika.exceptions as px
from pika.adapters.blocking_connection import BlockingChannel

from fsclone.chunk import Chunk, Result
from fsclone.config import Config
from fsclone.engine.pool import run_pool
from fsclone.engine.worker import ChunkRunner, worker_name
from fsclone.errors import MessageError
from fsclone.signing import Signer
from fsclone.spec import PassSpec
from fsclone.transport.amqp import link, wire
from fsclone.transport.amqp.allowed import Roots, admitted
from fsclone.transport.amqp.link import BrokerAuthError
from fsclone.transport.amqp.settings import BrokerSettings, broker_settings, signing_key

log = logging.getLogger("fsclone.amqp")
#: exit code of a worker process that lost the broker in the middle of a chunk (EX_TEMPFAIL)
LOST_MID_CHUNK = 75
#: the most reasons to ignore an announcement that a worker remembers having logged
_TOLD = 1000


@dataclass
class _Pass:
    spec: PassSpec
    queues: wire.Queues
    runner: ChunkRunner
    seen: float  # when it was last announced (monotonic)
    tag: str | None = None  # our consumer tag while we take its chunks
    ended: bool = False


@dataclass
class _Delivery:
    served: _Pass
    tag: int
    channel: int  # which of our channels it came on: tags die with their channel
    body: bytes
    earlier: int  # deliveries of this message before this one


@dataclass
class _Job:
    delivery: _Delivery
    chunks: Sequence[Chunk]
    results: list[Result] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)


class Consumer:
    """Serves every pass announced on the broker until asked to stop, then drains: the chunk
    in hand is finished, the rest of its message goes back to the queue."""

    def __init__(self, settings: BrokerSettings, name: str, key: bytes, allowed: Roots) -> None:
        self.settings = settings
        self.name = name
        self.key = key
        self.signer = Signer(key)
        self.allowed = allowed
        self.told: set[str] = set()  # why announcements were ignored, each logged once
        self.conn: pika.BlockingConnection | None = None
        self.ch: BlockingChannel | None = None
        self.channel = 0
        self.passes: dict[str, _Pass] = {}
        self.refused: set[str] = set()  # passes whose roots we cannot open
        self.waiting: deque[_Delivery] = deque()
        self.job: _Job | None = None
        self.stopping = threading.Event()
        self.parent = os.getppid()

    def stop(self) -> None:
        """Drain and exit (from a signal handler: only sets a flag)."""
        self.stopping.set()

    def _drain(self) -> None:
        log.info("draining: finishing the chunk in hand, giving back the rest")
        for served in list(self.passes.values()):
            self._release(served)
        while self.waiting:
            self._give_back(self.waiting.popleft())

    def run(self) -> int:
        """Serve until stopped; 0 after a clean drain, 2 when the broker refuses us."""
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
            self._close()
        return 0

    def _lost(self, exc: px.AMQPError) -> None:
        """The connection is gone, and with it our hold on the message in hand: the broker
        gives it to another worker. Running it on here, side by side with that one, is unsafe
        (a later attempt removes an earlier one's temp files), so a worker in the middle of
        a chunk leaves at once; its supervisor starts a fresh one."""
        if self.job is not None and not self.job.done.is_set():
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
        for served in self.passes.values():
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
        for served in list(self.passes.values()):
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
            self._tell(f"ignored an announcement: {exc}")
            return
        served = self.passes.get(spec.id)
        if event == wire.ENDED:
            if served is not None:
                log.info("pass %s ended", spec.id)
                self._drop(served)
            return
        if self.stopping.is_set() or spec.id in self.refused:
            return
        if served is None:
            served = self._open(spec)
        if served is not None:
            served.seen = time.monotonic()
            if served.tag is None:
                self._consume(served)

    def _tell(self, line: str) -> None:
        """Log why a pass is ignored, once (its announcements come every few seconds; a flood
        of made-up ones is remembered up to a point, then logged again)."""
        if line not in self.told:
            if len(self.told) >= _TOLD:
                self.told.clear()
            self.told.add(line)
            log.warning("%s", line)

    def _open(self, announced: PassSpec) -> _Pass | None:
        spec, why = admitted(announced, self.allowed)
        if spec is None:
            self._tell(f"ignoring pass {announced.id} ({announced.op} {announced.src!r} -> "
                       f"{announced.dst!r}): {why}")
            self.refused.add(announced.id)
            return None
        try:
            runner = ChunkRunner(spec, self.name, self.key)
        except OSError as exc:
            log.error("cannot serve pass %s: %s: %s", spec.id, exc.filename, exc.strerror)
            self.refused.add(spec.id)
            return None
        served = _Pass(spec, wire.Queues.of(spec.id), runner, time.monotonic())
        self.passes[spec.id] = served
        log.info("serving pass %s: %s %s -> %s", spec.id, spec.op, spec.src, spec.dst)
        return served

    def _consume(self, served: _Pass) -> None:
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

    def _busy(self, served: _Pass) -> bool:
        return self.job is not None and self.job.delivery.served is served

    def _release(self, served: _Pass) -> None:
        """Stop taking the pass's chunks, unless we hold one: then once it is done. A
        resuming coordinator waits for the consumers of its queue to go before it sends its
        chunks again, so no chunk ever runs twice side by side."""
        if served.tag is not None and not self._busy(served):
            if self.ch is not None and self.ch.is_open:
                self.ch.basic_cancel(served.tag)
            served.tag = None

    def _drop(self, served: _Pass) -> None:
        """Stop serving a pass; its consumer and roots go once no chunk of it runs."""
        served.ended = True
        self.passes.pop(served.spec.id, None)
        self._release(served)
        if not self._busy(served):
            served.runner.close()

    def _expire(self) -> None:
        """A pass not announced for a lease is dropped: its coordinator is gone, and a worker
        must not write to a target that nobody coordinates (a new pass may be running)."""
        now = time.monotonic()
        for served in list(self.passes.values()):
            if now - served.seen > wire.LEASE:
                log.info("pass %s: no word from its coordinator for %.0f s; left", served.spec.id,
                         now - served.seen)
                self._drop(served)

    def _on_cancel(self, method: Any) -> None:
        """The broker cancelled a consumer: its queue was deleted, the pass is over."""
        for served in list(self.passes.values()):
            if served.tag == method.method.consumer_tag:
                served.tag = None
                self._drop(served)

    # -- messages ----------------------------------------------------------------------------
    def _on_chunk(self, served: _Pass, ch: BlockingChannel, method: Any,
                  properties: pika.BasicProperties, body: bytes) -> None:
        earlier = int((properties.headers or {}).get("x-delivery-count", 0))
        self.waiting.append(_Delivery(served, method.delivery_tag, self.channel, body, earlier))

    def _start(self) -> None:
        """Start the next message, if idle."""
        while self.job is None and self.waiting and not self.stopping.is_set():
            delivery = self.waiting.popleft()
            if delivery.served.ended:
                self._give_back(delivery)
                continue
            try:
                chunks = wire.decode_chunks(delivery.body)
                for chunk in chunks:
                    delivery.served.runner.admit(chunk)
            except MessageError as exc:
                self._dead_letter(delivery, str(exc))
                continue
            # A redelivered chunk may follow a run that died and left temp files. It keeps its
            # attempt: the delivery count also counts chunks given back unstarted (a draining
            # worker), which are no runs; the broker's delivery limit bounds the deaths.
            chunks = [dataclasses.replace(c, redo=True) if delivery.earlier else c
                      for c in chunks]
            self.job = job = _Job(delivery, chunks)
            threading.Thread(target=self._work, args=(job,), daemon=True,
                             name="fsclone-chunk").start()

    def _work(self, job: _Job) -> None:
        """In the chunk thread: run the chunks, then wake the I/O loop to publish."""
        runner = job.delivery.served.runner
        for chunk in job.chunks:
            if self.stopping.is_set() and job.results:
                break  # draining: the chunks not started go back to the queue
            job.results.append(runner.run(chunk))
        job.done.set()
        conn = self.conn
        if conn is not None:
            with contextlib.suppress(px.AMQPError):  # the loop wakes up within a second anyway
                conn.add_callback_threadsafe(lambda: None)

    def _flush(self) -> None:
        """Publish a finished job's results (and give back what it did not run), then ack."""
        job = self.job
        if job is None or not job.done.is_set():
            return
        delivery, served = job.delivery, job.delivery.served
        body = wire.encode_results(job.results)
        self._publish(served.queues.results, body, {
            wire.SIGNATURE_HEADER: self.signer.mac(wire.results_purpose(served.spec.id), body)})
        rest = job.chunks[len(job.results):]
        if rest:
            self._publish(served.queues.chunks, wire.encode_chunks(rest))
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

    def _ack(self, delivery: _Delivery) -> None:
        """Acknowledge on the channel it came from; on a newer channel the broker has already
        taken it back (and will give it out again: duplicates are harmless)."""
        if delivery.channel == self.channel and self.ch is not None:
            self.ch.basic_ack(delivery.tag)

    def _give_back(self, delivery: _Delivery) -> None:
        if delivery.channel == self.channel and self.ch is not None:
            self.ch.basic_nack(delivery.tag, requeue=True)

    def _dead_letter(self, delivery: _Delivery, why: str) -> None:
        """A malformed message: to the pass's dead-letter queue, with the reason, for its
        coordinator to report."""
        queues = delivery.served.queues
        log.error("pass %s: malformed or refused work message moved to %s: %s",
                  delivery.served.spec.id, queues.dead, why)
        self._publish(queues.dead, delivery.body, {wire.REASON_HEADER: why})
        self._ack(delivery)


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
