"""The transport-independent half of a worker: the worker loop every transport runs over its
:class:`~fsclone.transport.base.Delivery`, and the runner of one pass's chunks (always answers
with a Result). This module knows transports only through that interface: the concrete ones
import it to run it in their workers, and nothing in the engine imports them."""

from __future__ import annotations

import os
import socket
import traceback

from fsclone.chunk import Chunk, Result
from fsclone.errors import MessageError
from fsclone.ops.context import Context
from fsclone.ops.registry import OPS
from fsclone.schema import check_chunk, is_temp_for
from fsclone.signing import Signer
from fsclone.spec import PassSpec
from fsclone.stats import counters as C
from fsclone.transport.base import Delivery, Message


def work(delivery: Delivery) -> None:
    """The worker loop: handle what ``delivery`` brings until it says stop."""
    while (message := delivery.receive()) is not None:
        handle(delivery, message)


def handle(delivery: Delivery, message: Message) -> None:
    """Admit the whole message (one refused chunk and none of it runs: it is rejected), run
    its chunks (those of a redelivered message marked ``redo``: a run that died may have left
    temp files), publish the results, and only then acknowledge: a worker that dies in between
    leaves the message to be delivered again, never a chunk done and unanswered. A draining
    delivery stops after the chunk in hand, and the chunks not started go back to its queue."""
    runner = message.runner
    try:
        for chunk in message.chunks:
            runner.admit(chunk)
    except MessageError as exc:
        delivery.reject(message, str(exc))
        return
    chunks = [c.redone() for c in message.chunks] if message.earlier else message.chunks
    results: list[Result] = []
    for chunk in chunks:
        if results and delivery.draining():
            break
        results.append(runner.run(chunk))
    delivery.publish(message, results)
    if len(results) < len(chunks):
        delivery.give_back(message, chunks[len(results):])
    delivery.ack(message)


def worker_name(index: int | str) -> str:
    return f"{socket.gethostname().split('.')[0]}.{index}"


class ChunkRunner:
    """Holds a pass's Context (roots opened once) and runs chunks against it. ``key`` checks
    the coordinator's signature of the chunks only its plan may issue (fsclone.signing)."""

    def __init__(self, spec: PassSpec, name: str, key: bytes) -> None:
        self.name = name
        self.signer = Signer(key)
        self.ctx = Context(spec)

    def admit(self, chunk: Chunk) -> None:
        """Raise MessageError unless ``chunk`` is one this pass's coordinator could have issued:
        an op we run, of its op's shape, a temp name of this pass made for the chunk's file, and
        the coordinator's signature on a chunk that removes or publishes entries."""
        spec = self.ctx.spec
        if chunk.op not in OPS:
            raise MessageError(f"unknown op {chunk.op!r}")
        check_chunk(chunk.op, chunk.path, chunk.names, chunk.args)
        tmp = chunk.args.get("tmp")
        if tmp is not None and not is_temp_for(tmp, spec.id, set(chunk.names or ())):
            raise MessageError(f"{tmp!r} is not a temp name of pass {spec.id} for "
                               f"{chunk.subject!r}")
        self.signer.check(spec.id, chunk)

    def run(self, chunk: Chunk) -> Result:
        """Run a chunk the worker loop admitted (:func:`handle`: a refused one never gets here).
        Per-item errors are inside the Result; anything else fails the chunk as a whole, so the
        coordinator retries it and, in the end, reports it: never acknowledged silently."""
        pace = self.ctx.pace
        if pace is not None:
            pace.start()
        try:
            result = OPS[chunk.op](self.ctx, chunk)
            if pace is not None:  # within its share of the rate limits before it answers
                pace.wait(result.counters)
        except Exception as exc:
            tb = traceback.extract_tb(exc.__traceback__)[-1]
            where = f"{os.path.basename(tb.filename)}:{tb.lineno}"
            result = Result(chunk=chunk, failed=f"{type(exc).__name__}: {exc} ({where})")
        result.worker = self.name
        result.counters[C.CHUNKS] = result.counters.get(C.CHUNKS, 0) + 1
        return result

    def close(self) -> None:
        self.ctx.close()
