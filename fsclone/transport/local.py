"""The local transport: N forked worker processes on this machine, no service needed.

Each worker has two pipes (chunks in, results out) and a reader thread, so neither side can
block the other with a large message. The coordinator keeps ``prefetch`` chunks in flight per
worker; when a worker dies, its in-flight chunks come back as failed results (so they are
retried like any failure) and a replacement worker is started.

Messages are plain pickles over the pipes, and the coordinator waits on one selector that
lives as long as the workers: per chunk, the least CPU taken from the workers it shares the
machine with.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import pickle
import queue
import selectors
import signal
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.context import ForkProcess

from fsclone.chunk import Chunk, Result
from fsclone.engine.worker import ChunkRunner, work, worker_name
from fsclone.spec import PassSpec
from fsclone.transport.base import Message, Transport
from fsclone.transport.inflight import InFlight, Pushed

_STOP = None
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


@dataclass
class _Worker:
    index: int
    process: ForkProcess
    chunks: Connection  # coordinator → worker
    results: Connection  # worker → coordinator


class LocalTransport(Transport):
    def __init__(self, workers: int, prefetch: int = 2) -> None:
        self.size = max(1, workers)
        self.in_flight = InFlight(prefetch)
        self.workers: list[_Worker] = []
        self.spec: PassSpec | None = None
        self.selector = selectors.DefaultSelector()

    def start(self, spec: PassSpec) -> None:
        self.spec = spec
        self.workers = []
        for index in range(self.size):
            self.workers.append(self._spawn(index))

    def _spawn(self, index: int) -> _Worker:
        ctx = mp.get_context("fork")
        chunks_r, chunks_w = ctx.Pipe(duplex=False)
        results_r, results_w = ctx.Pipe(duplex=False)
        ours = [chunks_w, results_r, *(c for w in self.workers for c in (w.chunks, w.results))]
        proc = ctx.Process(target=_worker_main,
                           args=(self.spec, self.key, index, chunks_r, results_w, ours,
                                 os.getpid()),
                           name=f"fsclone-worker-{index}", daemon=True)
        proc.start()
        chunks_r.close()
        results_w.close()
        worker = _Worker(index, proc, chunks_w, results_r)
        self.selector.register(results_r, selectors.EVENT_READ, (worker, False))
        self.selector.register(proc.sentinel, selectors.EVENT_READ, (worker, True))
        return worker

    def submit(self, chunks: Iterable[Chunk]) -> None:
        self.in_flight.add(chunks)
        self._dispatch()

    def _dispatch(self) -> None:
        for index, chunk in self.in_flight.assign(w.index for w in self.workers):
            self.workers[index].chunks.send_bytes(pickle.dumps(chunk, pickle.HIGHEST_PROTOCOL))

    def poll(self, timeout: float) -> list[Result]:
        """One result from each worker that has one (a worker with more is ready again at once
        at the next poll), then the replacement of any worker that died."""
        ready = self.selector.select(timeout)
        results: list[Result] = []
        for key, _ in ready:
            worker, died = key.data
            if not died:
                results.extend(self._receive(worker))
        for key, _ in ready:
            worker, died = key.data
            if died:
                results.extend(self._replace(worker))
        self._dispatch()
        return results

    def _receive(self, worker: _Worker) -> list[Result]:
        try:
            result: Result = pickle.loads(worker.results.recv_bytes())
        except (EOFError, OSError):
            return []  # the worker died; its sentinel reports it
        self.in_flight.done(worker.index, result.chunk.id)
        return [result]

    def _drain(self, worker: _Worker) -> list[Result]:
        """Every result a dead worker sent before it died."""
        out: list[Result] = []
        with contextlib.suppress(OSError):
            while worker.results.poll() and (got := self._receive(worker)):
                out += got  # _receive gives nothing at the end of the pipe: stop there
        return out

    def _replace(self, dead: _Worker) -> list[Result]:
        """A worker died (killed, crashed): fail its chunks so they are retried elsewhere."""
        results = self._drain(dead)
        code = dead.process.exitcode
        results += self.in_flight.lost(dead.index, f"worker {dead.index} died (exit {code})")
        self.selector.unregister(dead.results)
        self.selector.unregister(dead.process.sentinel)
        dead.chunks.close()
        dead.results.close()
        self.workers[self.workers.index(dead)] = self._spawn(dead.index)
        return results

    def depth(self) -> int:
        return self.in_flight.depth()

    def stop(self) -> None:
        for worker in self.workers:
            with contextlib.suppress(OSError):
                worker.chunks.send_bytes(pickle.dumps(_STOP))
        for worker in self.workers:
            worker.process.join(timeout=5)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            self.selector.unregister(worker.results)
            self.selector.unregister(worker.process.sentinel)
            worker.chunks.close()
            worker.results.close()
        self.workers = []


def _worker_main(spec: PassSpec, key: bytes, index: int, chunks: Connection,
                 results: Connection, inherited: list[Connection], coordinator: int) -> None:
    """A worker process: run chunks until told to stop or the coordinator goes away.

    ``inherited`` are the coordinator's ends of every pipe, which fork copied here: while any
    worker held a write end of a chunk pipe, its reader never saw EOF when the coordinator
    died, and the workers lived on forever."""
    _die_with(coordinator)
    for conn in inherited:
        conn.close()
    for signum in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C, a walltime end: the
        signal.signal(signum, signal.SIG_IGN)      # coordinator's to handle
    runner = ChunkRunner(spec, worker_name(index), key)
    try:
        work(_Pipes(chunks, results, runner))
    except OSError:  # the coordinator is gone (a broken pipe)
        pass
    finally:
        runner.close()


class _Pipes(Pushed):
    """A worker's end of its two pipes. A reader thread keeps taking chunks off the pipe while
    one runs, so the coordinator never blocks on a full pipe."""

    def __init__(self, chunks: Connection, results: Connection, runner: ChunkRunner) -> None:
        self.results = results
        self.runner = runner
        self.inbox: queue.SimpleQueue[Chunk | None] = queue.SimpleQueue()
        threading.Thread(target=self._read, args=(chunks,), daemon=True).start()

    def _read(self, chunks: Connection) -> None:
        try:
            while True:
                self.inbox.put(pickle.loads(chunks.recv_bytes()))
        except (EOFError, OSError):
            self.inbox.put(_STOP)

    def receive(self) -> Message | None:
        chunk = self.inbox.get()
        return None if chunk is _STOP else Message((chunk,), self.runner)

    def publish(self, message: Message, results: Sequence[Result]) -> None:
        for result in results:
            self.results.send_bytes(pickle.dumps(result, pickle.HIGHEST_PROTOCOL))


def _die_with(coordinator: int) -> None:
    """Have the kernel kill this worker when its coordinator dies, at once rather than after
    its chunk: a resumed pass must not race the last chunk of a dead one (a file linked in, a
    directory's times set after the new pass set them). Stopping mid-chunk is safe: unnamed
    files vanish, and a redone chunk removes its temp names."""
    import ctypes  # here, not at import: the coordinator never needs it

    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != coordinator:  # it died before the kernel was asked
        os._exit(0)
