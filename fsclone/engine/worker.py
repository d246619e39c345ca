"""The transport-independent half of a worker: run one chunk, always answer with a Result."""

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
        """Per-item errors are inside the Result; anything else fails the chunk as a whole, so
        the coordinator retries it and, in the end, reports it: never acknowledged silently.
        A chunk :meth:`admit` refuses is never run."""
        try:
            self.admit(chunk)
            result = OPS[chunk.op](self.ctx, chunk)
        except MessageError as exc:
            result = Result(chunk=chunk, failed=f"refused: {exc}")
        except Exception as exc:
            tb = traceback.extract_tb(exc.__traceback__)[-1]
            where = f"{os.path.basename(tb.filename)}:{tb.lineno}"
            result = Result(chunk=chunk, failed=f"{type(exc).__name__}: {exc} ({where})")
        result.worker = self.name
        result.counters[C.CHUNKS] = result.counters.get(C.CHUNKS, 0) + 1
        return result

    def close(self) -> None:
        self.ctx.close()
