"""The transport-independent half of a worker: run one chunk, always answer with a Result."""

from __future__ import annotations

import os
import socket
import traceback

from fsclone.chunk import Chunk, Result
from fsclone.ops.context import Context
from fsclone.ops.registry import OPS
from fsclone.spec import PassSpec
from fsclone.stats import counters as C


def worker_name(index: int | str) -> str:
    return f"{socket.gethostname().split('.')[0]}.{index}"


class ChunkRunner:
    """Holds a pass's Context (roots opened once) and runs chunks against it."""

    def __init__(self, spec: PassSpec, name: str) -> None:
        self.name = name
        self.ctx = Context(spec)

    def run(self, chunk: Chunk) -> Result:
        """Per-item errors are inside the Result; anything else fails the chunk as a whole, so
        the coordinator retries it and, in the end, reports it: never acknowledged silently."""
        op = OPS.get(chunk.op)
        if op is None:
            result = Result(chunk=chunk, failed=f"unknown op {chunk.op!r}")
        else:
            try:
                result = op(self.ctx, chunk)
            except Exception as exc:
                tb = traceback.extract_tb(exc.__traceback__)[-1]
                where = f"{os.path.basename(tb.filename)}:{tb.lineno}"
                result = Result(chunk=chunk, failed=f"{type(exc).__name__}: {exc} ({where})")
        result.worker = self.name
        result.counters[C.CHUNKS] = result.counters.get(C.CHUNKS, 0) + 1
        return result

    def close(self) -> None:
        self.ctx.close()
