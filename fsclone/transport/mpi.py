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

With a broker configured, an MPI job carries no chunks: rank 0 runs the AMQP coordinator and the
other ranks AMQP consumers (:meth:`MpiJob.serve` with a service), so queued work outlives the
job; MPI only tells the ranks when to exit.
"""

from __future__ import annotations

import atexit
import json
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, TypeVar

from fsclone.chunk import Chunk, Result, dumps, loads_chunk, loads_result
from fsclone.engine.worker import ChunkRunner, work, worker_name
from fsclone.errors import FscloneError, MessageError, TransportError
from fsclone.spec import PassSpec
from fsclone.transport.base import Message, Transport
from fsclone.transport.inflight import InFlight, Pushed

if TYPE_CHECKING:
    from mpi4py import MPI

    from fsclone.transport.pool import Service

T = TypeVar("T")

SPEC, CHUNK, RESULT, STOP, BYE, EXIT = range(1, 7)

#: launcher variables holding the number of ranks: Open MPI; PMI (MPICH, Intel MPI, Cray, srun
#: --mpi=pmi2); a Slurm job step (not SLURM_NTASKS: the batch script itself has that one)
SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_STEP_NUM_TASKS")
#: the ranks' exit code when rank 0 fails without a code of its own
_FATAL = 2
#: a wait looks again after 0.1 ms, then twice as long each time, up to 5 ms: short enough
#: not to starve ranks of chunks that take milliseconds, long enough to cost no CPU when idle
_FIRST_PAUSE, _LONGEST_PAUSE = 0.0001, 0.005
#: how long rank 0 waits at the end for workers to finish the chunks they still hold
STOP_TIMEOUT = 120.0


def launcher_size(env: Mapping[str, str]) -> int | None:
    """How many ranks the launcher says it started, or None when it does not say."""
    sizes = [int(env[v]) for v in SIZE_VARIABLES if env.get(v, "").isdigit()]
    return sizes[0] if sizes else None


def in_mpi_job(env: Mapping[str, str]) -> bool:
    """Whether a launcher started this process as one of several ranks, judged from the
    environment alone so that plain runs never load MPI. A PMIx rank that names no size
    counts too: :class:`MpiJob` learns the real size, and one rank works locally anyway."""
    size = launcher_size(env)
    return size > 1 if size is not None else "PMIX_RANK" in env


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


def _receive(comm: MPI.Comm, source: int | None,
             timeout: float | None) -> tuple[int, int, bytes] | None:
    """The next message from rank ``source`` (None: any rank) as (rank, tag, body), or None if
    nothing came within ``timeout`` seconds."""
    from mpi4py import MPI

    status = MPI.Status()
    rank = MPI.ANY_SOURCE if source is None else source
    message = _wait(lambda: comm.Improbe(rank, MPI.ANY_TAG, status), timeout)
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
    """Rank 0's side: chunks go to ranks 1..N-1, ``prefetch`` in flight per rank. Four, not
    the local transport's two: a result waits for rank 0's next look (up to a pause), and a
    directory of small files takes milliseconds, so two left ranks idle (measured on tmpfs)."""

    def __init__(self, comm: MPI.Comm, prefetch: int = 4) -> None:
        self.comm = comm
        self.ranks = range(1, comm.Get_size())
        self.in_flight = InFlight(prefetch)
        self.outbox = _Outbox(comm)
        self.serving = False
        #: whether every rank said BYE after the last pass, so they can be told to exit
        self.stopped_cleanly = True

    def start(self, spec: PassSpec) -> None:
        body = json.dumps({"spec": spec.to_wire(), "key": self.key.hex()},
                          ensure_ascii=True).encode("ascii")
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
        while (message := _receive(self.comm, None, wait)) is not None:
            rank, tag, body = message
            if tag != RESULT:
                raise MessageError(f"unexpected message (tag {tag}) from rank {rank}")
            result = loads_result(body)
            self.in_flight.done(rank, result.chunk.id)
            results.append(result)
            wait = 0  # take what has arrived, then let the coordinator apply it
        self._dispatch()
        return results

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
        while waiting and (message := _receive(self.comm, None,
                                               deadline - time.monotonic())) is not None:
            rank, tag, _ = message
            if tag == BYE:
                waiting.discard(rank)
        self.stopped_cleanly = not waiting
        if waiting:
            print(f"fsclone: ranks {sorted(waiting)} did not stop within {STOP_TIMEOUT:.0f}s",
                  file=sys.stderr, flush=True)


class MpiJob:
    """This process's part in an MPI job: rank 0 coordinates, the other ranks work, and all
    exit with rank 0's exit code. Creating it imports mpi4py and starts MPI, once
    :func:`fsclone.transport.pmi.check` has found that MPI_Init can succeed."""

    def __init__(self, env: Mapping[str, str]) -> None:
        import mpi4py

        mpi4py.rc.initialize, mpi4py.rc.finalize = False, True
        from mpi4py import MPI

        if not MPI.Is_initialized():
            from fsclone.transport import pmi  # only a job that starts MPI asks what it offers

            pmi.check(env, MPI.Get_library_version())
            MPI.Init_thread(MPI.THREAD_MULTIPLE)
        self.comm = MPI.COMM_WORLD
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        self.mpi: MpiTransport | None = None
        started = launcher_size(env)
        if started is not None and started != self.size:
            # every task would run a pass of its own, fighting over the target's lock
            raise TransportError(f"the launcher started {started} tasks but MPI sees "
                                 f"{self.size}: it does not match this MPI (srun --mpi=list)")

    def transport(self) -> MpiTransport | None:
        """Rank 0's transport to ranks 1..N-1; None in a job of one rank, where the local
        transport works on this node."""
        if self.size > 1:
            self.mpi = MpiTransport(self.comm)
        return self.mpi

    @contextmanager
    def coordinating(self) -> Iterator[None]:
        """Rank 0's part: on the way out, however the pass ended, tell every rank to exit with
        rank 0's exit code, so that the job's code is the same on every rank."""
        code = _FATAL
        try:
            yield
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
            self._finish(code)

    def _finish(self, code: int) -> None:
        """Send EXIT to every rank; abort the job if some rank cannot hear it."""
        outbox = _Outbox(self.comm)
        if self.mpi is not None:
            self.mpi.stop()
            outbox = self.mpi.outbox
        if self.mpi is None or self.mpi.stopped_cleanly:
            for rank in range(1, self.size):
                outbox.send(rank, EXIT, str(code).encode("ascii"))
            if outbox.flush(STOP_TIMEOUT):
                atexit.register(self._leave)  # once the summary or the error is printed
                return
        self.comm.Abort(code or _FATAL)

    def _leave(self) -> None:
        """Every rank's last step: meet the others. A launcher kills the whole job when one
        rank exits with a code other than 0, so no rank may exit before rank 0 has printed."""
        request = self.comm.Ibarrier()
        _wait(lambda: True if request.Test() else None, None)

    def serve(self, service: Service | None = None) -> int:
        """A worker rank's part; returns the exit code rank 0 sends. Without ``service``, run
        the chunks rank 0 sends; with one (an AMQP consumer), run it until rank 0 says exit."""
        for signum in (signal.SIGINT, signal.SIGTERM):  # srun passes both on to every
            signal.signal(signum, signal.SIG_IGN)      # task: rank 0 decides when a pass stops
        return self._run_chunks() if service is None else self._run_beside(service)

    def _run_chunks(self) -> int:
        """A rank that cannot serve (a root not mounted on its node) says why in one line and
        aborts the job: the pass record keeps what was done, and a re-run resumes it."""
        rank = _Rank(self.comm, worker_name(self.rank))
        try:
            work(rank)
            self._leave()
            return rank.code
        except (FscloneError, OSError, ValueError) as exc:
            print(f"fsclone: rank {self.rank} ({rank.name}) stops the job: {exc}",
                  file=sys.stderr, flush=True)
        self.comm.Abort(_FATAL)
        return _FATAL

    def _run_beside(self, service: Service) -> int:
        """Run ``service`` while a thread waits for rank 0's EXIT, which stops it (it drains:
        the chunk in hand is finished). A service that fails on its own aborts the job."""
        told: list[int] = []

        def wait_for_exit() -> None:
            message = _receive(self.comm, 0, None)
            told.append(int(message[2]) if message and message[1] == EXIT else _FATAL)
            service.stop()

        watcher = threading.Thread(target=wait_for_exit, name="fsclone-mpi-exit", daemon=True)
        watcher.start()
        code = service.run()
        if not told and code:
            self.comm.Abort(code)
        watcher.join()
        self._leave()
        return told[0]


class _Rank(Pushed):
    """A worker rank's side of the messages with rank 0 (see the module's docstring): a pass's
    SPEC opens its roots, STOP closes them, EXIT ends the loop with the job's exit code."""

    def __init__(self, comm: MPI.Comm, name: str) -> None:
        self.comm = comm
        self.name = name
        self.outbox = _Outbox(comm)
        self.runner: ChunkRunner | None = None
        self.code = _FATAL

    def receive(self) -> Message | None:
        while (message := _receive(self.comm, 0, None)) is not None:
            _, tag, body = message
            if tag == SPEC:
                spec, key = _load_spec(body)
                self.runner = ChunkRunner(spec, self.name, key)
            elif tag == CHUNK and self.runner is not None:
                return Message((loads_chunk(body),), self.runner)
            elif tag == STOP:
                if self.runner is not None:
                    self.runner.close()
                self.runner = None
                self.outbox.send(0, BYE, b"")
            elif tag == EXIT:
                self.outbox.flush(None)
                self.code = int(body)
                return None
            else:
                raise MessageError(f"unexpected message (tag {tag}) from rank 0")
        return None

    def publish(self, message: Message, results: Sequence[Result]) -> None:
        for result in results:
            self.outbox.send(0, RESULT, dumps(result))


def _load_spec(body: bytes) -> tuple[PassSpec, bytes]:
    """The pass spec and the key of a SPEC message."""
    try:
        data = json.loads(body)
        return PassSpec.from_wire(data["spec"]), bytes.fromhex(data["key"])
    except (ValueError, KeyError, TypeError) as exc:
        raise MessageError(f"bad pass spec message: {exc}") from exc
