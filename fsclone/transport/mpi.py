"""The MPI transport: under ``srun`` or ``mpirun``, rank 0 coordinates and ranks 1..N-1 work.

Only this module imports mpi4py, and only once a pass runs as an MPI job (:class:`MpiJob`), so
plain runs never load MPI. Every message is point to point between rank 0 and one worker rank;
bodies are the JSON of :mod:`fsclone.chunk` in byte buffers, never pickles::

    rank 0 -> k   SPEC    the pass spec         k opens the roots
    rank 0 -> k   CHUNK   a chunk               k answers RESULT
    rank 0 -> k   STOP    the pass is over      k answers BYE once its chunks are done
    rank 0 -> k   EXIT    the job's exit code   k exits with it

Nobody blocks inside MPI: waits poll with a growing pause, because Open MPI's blocking calls spin
a core while ranks often outnumber cores (metadata-bound trees), and so that rank 0 still
reports progress and sees Ctrl-C.

A rank that dies takes the whole job with it (MPI's default error handler aborts), so there is
no redelivery within a job: the pass record, committed as results arrive, is the recovery, and
running the same command again resumes the pass.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, TypeVar

from fsclone.chunk import Chunk, Result, dumps, loads_chunk, loads_result
from fsclone.engine.worker import ChunkRunner, worker_name
from fsclone.errors import FscloneError, MessageError
from fsclone.spec import PassSpec
from fsclone.transport.base import Transport
from fsclone.transport.inflight import InFlight

if TYPE_CHECKING:
    from mpi4py import MPI

T = TypeVar("T")

SPEC, CHUNK, RESULT, STOP, BYE, EXIT = range(1, 7)

#: launcher variables holding the number of ranks: Open MPI; PMI (MPICH, Intel MPI, Cray, srun
#: --mpi=pmi2); a Slurm job step (not SLURM_NTASKS: the batch script itself has that one)
SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_STEP_NUM_TASKS")
#: the ranks' exit code when rank 0 fails without a code of its own
_FATAL = 2
_FIRST_PAUSE, _LONGEST_PAUSE = 0.0005, 0.01
#: how long rank 0 waits at the end for workers to finish the chunks they still hold
STOP_TIMEOUT = 120.0


def in_mpi_job(env: Mapping[str, str]) -> bool:
    """Whether a launcher started this process as one of several ranks, judged from the
    environment alone so that plain runs never load MPI. A PMIx rank that names no size
    counts too: :class:`MpiJob` learns the real size, and one rank works locally anyway."""
    sizes = [int(env[v]) for v in SIZE_VARIABLES if env.get(v, "").isdigit()]
    if sizes:
        return sizes[0] > 1
    return "PMIX_RANK" in env


def _wait(probe: Callable[[], T | None], timeout: float | None) -> T | None:
    """Poll ``probe`` until it gives a value or ``timeout`` seconds pass (None: forever),
    pausing a little longer each time nothing happened."""
    deadline = None if timeout is None else time.monotonic() + timeout
    pause = _FIRST_PAUSE
    while (value := probe()) is None:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return None
        time.sleep(pause if left is None else min(pause, left))
        pause = min(pause * 2, _LONGEST_PAUSE)
    return value


def _receive(comm: MPI.Comm, source: int, timeout: float | None) -> tuple[int, int, bytes] | None:
    """The next message from ``source`` (or any rank) as (rank, tag, body), or None on timeout."""
    from mpi4py import MPI

    status = MPI.Status()
    message = _wait(lambda: comm.Improbe(source, MPI.ANY_TAG, status), timeout)
    if message is None:
        return None
    body = bytearray(status.Get_count(MPI.BYTE))
    message.Recv([body, MPI.BYTE])
    return status.Get_source(), status.Get_tag(), bytes(body)


class _Outbox:
    """Nonblocking sends, each buffer kept alive until MPI is done with it."""

    def __init__(self, comm: MPI.Comm) -> None:
        self.comm = comm
        self.sending: list[tuple[MPI.Request, bytes]] = []

    def send(self, rank: int, tag: int, body: bytes) -> None:
        from mpi4py import MPI

        self.sending = [(r, b) for r, b in self.sending if not r.Test()]
        self.sending.append((self.comm.Isend([body, MPI.BYTE], rank, tag), body))

    def flush(self, timeout: float | None) -> bool:
        """Wait until every send is complete; False if some are not after ``timeout``."""
        def all_sent() -> bool | None:
            self.sending = [(r, b) for r, b in self.sending if not r.Test()]
            return True if not self.sending else None

        return bool(_wait(all_sent, timeout))


class MpiTransport(Transport):
    """Rank 0's side: chunks go to ranks 1..N-1, ``prefetch`` in flight per rank."""

    def __init__(self, comm: MPI.Comm, prefetch: int = 2) -> None:
        self.comm = comm
        self.ranks = range(1, comm.Get_size())
        self.in_flight = InFlight(prefetch)
        self.outbox = _Outbox(comm)
        self.serving = False
        #: whether every rank said BYE after the last pass, so they can be told to exit
        self.stopped_cleanly = True

    def start(self, spec: PassSpec) -> None:
        body = json.dumps(spec.to_wire(), ensure_ascii=True).encode("ascii")
        for rank in self.ranks:
            self.outbox.send(rank, SPEC, body)
        self.serving = True

    def submit(self, chunks: Iterable[Chunk]) -> None:
        self.in_flight.add(chunks)
        self._dispatch()

    def _dispatch(self) -> None:
        for rank, chunk in self.in_flight.assign(self.ranks):
            self.outbox.send(rank, CHUNK, dumps(chunk))

    def poll(self, timeout: float) -> list[Result]:
        results: list[Result] = []
        wait: float = timeout
        while (message := _receive(self.comm, self._any(), wait)) is not None:
            rank, tag, body = message
            if tag != RESULT:
                raise MessageError(f"unexpected message (tag {tag}) from rank {rank}")
            result = loads_result(body)
            self.in_flight.done(rank, result.chunk.id)
            results.append(result)
            wait = 0  # take what has arrived, then let the coordinator apply it
        self._dispatch()
        return results

    def _any(self) -> int:
        from mpi4py import MPI

        return MPI.ANY_SOURCE

    def depth(self) -> int:
        return self.in_flight.depth()

    def stop(self) -> None:
        """End the pass on every rank: each finishes what it holds (results are dropped: after
        an interrupted pass those chunks are still outstanding in the record) and says BYE."""
        if not self.serving:
            return
        self.serving = False
        for rank in self.ranks:
            self.outbox.send(rank, STOP, b"")
        waiting = set(self.ranks)
        deadline = time.monotonic() + STOP_TIMEOUT
        while waiting and (message := _receive(self.comm, self._any(),
                                               deadline - time.monotonic())) is not None:
            rank, tag, _ = message
            if tag == BYE:
                waiting.discard(rank)
        self.stopped_cleanly = not waiting
        if waiting:
            print(f"fsclone: ranks {sorted(waiting)} did not stop within {STOP_TIMEOUT:.0f}s",
                  file=sys.stderr, flush=True)

    def finish(self, code: int) -> None:
        """Tell every rank to exit with ``code``; abort the job if some rank cannot hear it."""
        self.stop()
        if self.stopped_cleanly:
            for rank in self.ranks:
                self.outbox.send(rank, EXIT, str(code).encode("ascii"))
            if self.outbox.flush(STOP_TIMEOUT):
                return
        self.comm.Abort(code or _FATAL)


class MpiJob:
    """This process's part in an MPI job. Creating it imports mpi4py, which starts MPI."""

    def __init__(self) -> None:
        from mpi4py import MPI

        self.comm = MPI.COMM_WORLD
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()

    @contextmanager
    def coordinating(self) -> Iterator[MpiTransport | None]:
        """Rank 0's part. Yields the transport (None in a job of one rank: then the local
        transport works on this node), and on the way out, however the pass ended, tells every
        rank to exit with rank 0's exit code, so the job's code is the same on every rank."""
        transport = MpiTransport(self.comm) if self.size > 1 else None
        code = _FATAL
        try:
            yield transport
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
            raise
        except FscloneError as exc:
            code = exc.exit_code
            raise
        except KeyboardInterrupt:
            code = 128 + signal.SIGINT
            raise
        finally:
            if transport is not None:
                transport.finish(code)

    def serve(self) -> int:
        """A worker rank's life: run chunks for rank 0 until it says exit; returns the code.

        A rank that cannot serve (a root not mounted on its node) says why in one line and
        aborts the job: the pass record keeps what was done, and a re-run resumes it."""
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # rank 0 decides when a pass stops
        outbox = _Outbox(self.comm)
        runner: ChunkRunner | None = None
        try:
            while (message := _receive(self.comm, 0, None)) is not None:
                _, tag, body = message
                if tag == SPEC:
                    runner = ChunkRunner(_load_spec(body), worker_name(self.rank))
                elif tag == CHUNK and runner is not None:
                    outbox.send(0, RESULT, dumps(runner.run(loads_chunk(body))))
                elif tag == STOP:
                    if runner is not None:
                        runner.close()
                    runner = None
                    outbox.send(0, BYE, b"")
                elif tag == EXIT:
                    outbox.flush(None)
                    return int(body)
                else:
                    raise MessageError(f"unexpected message (tag {tag}) from rank 0")
        except (FscloneError, OSError, ValueError) as exc:
            print(f"fsclone: rank {self.rank} ({worker_name(self.rank)}): {exc}",
                  file=sys.stderr, flush=True)
        self.comm.Abort(_FATAL)
        return _FATAL


def _load_spec(body: bytes) -> PassSpec:
    try:
        return PassSpec.from_wire(json.loads(body))
    except ValueError as exc:
        raise MessageError(f"pass spec is not JSON: {exc}") from exc
