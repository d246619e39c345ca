"""The local transport: N forked worker processes on this machine, no service needed.

Each worker has two pipes (chunks in, results out) and a reader thread, so neither side can
block the other with a large message. A worker runs ``threads`` chunks at once, one a thread,
each thread with a runner (and so roots and a cwd) of its own: the depth a filesystem of round
trips needs (fsclone.transport.depth). The coordinator keeps a chunk more in flight per worker
than it has threads; when a worker dies, its in-flight chunks come back as failed results (so
they are retried like any failure) and a replacement worker is started.

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
import traceback
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
    def __init__(self, workers: int, prefetch: int = 2, threads: int = 1) -> None:
        self.size = max(1, workers)
        self.threads = max(1, threads)
        self.in_flight = InFlight(max(prefetch, self.threads + 1))
        self.workers: list[_Worker] = []
        self.spec: PassSpec | None = None
        self.selector = selectors.DefaultSelector()

    def slots(self) -> int:
        # one chunk a process keeps the cores busy: split further, a directory only costs
        # more chunks and lookups (measured on tmpfs: docs/performance.md)
        return self.size * self.threads if self.threads > 1 else 1

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
                           args=(self.spec, self.key, index, self.threads, chunks_r,
                                 results_w, ours, os.getpid()),
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


def _worker_main(spec: PassSpec, key: bytes, index: int, threads: int, chunks: Connection,
                 results: Connection, inherited: list[Connection], coordinator: int) -> None:
    """A worker process: run chunks, ``threads`` at once, until told to stop or the
    coordinator goes away.

    ``inherited`` are the coordinator's ends of every pipe, which fork copied here: while any
    worker held a write end of a chunk pipe, its reader never saw EOF when the coordinator
    died, and the workers lived on forever."""
    _die_with(coordinator)
    for conn in inherited:
        conn.close()
    for signum in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C, a walltime end: the
        signal.signal(signum, signal.SIG_IGN)      # coordinator's to handle
    inbox = _Inbox(chunks)
    sending = threading.Lock()
    names = [worker_name(index)] if threads == 1 else \
        [worker_name(f"{index}-{t}") for t in range(threads)]
    others = [threading.Thread(target=_serve, args=(spec, key, name, inbox, results, sending),
                               daemon=True) for name in names[1:]]
    for thread in others:
        thread.start()
    _serve(spec, key, names[0], inbox, results, sending)
    for thread in others:
        thread.join()


def _serve(spec: PassSpec, key: bytes, name: str, inbox: _Inbox, results: Connection,
           sending: threading.Lock) -> None:
    """One thread of a worker: its own runner over the worker's pipes. Anything but the
    coordinator going away (a broken pipe) ends the whole worker, as it would a worker of one
    thread: the chunks it holds then come back failed, and another worker is started."""
    try:
        runner = ChunkRunner(spec, name, key)
        try:
            work(_Pipes(inbox, results, sending, runner))
        finally:
            runner.close()
    except OSError:
        pass
    except BaseException:
        traceback.print_exc()
        os._exit(1)


class _Inbox:
    """The chunks coming down a worker's pipe. A reader thread keeps taking them off the pipe
    while chunks run, so the coordinator never blocks on a full pipe; the stop it reads is
    seen by every thread of the worker."""

    def __init__(self, chunks: Connection) -> None:
        self.queue: queue.SimpleQueue[Chunk | None] = queue.SimpleQueue()
        threading.Thread(target=self._read, args=(chunks,), daemon=True).start()

    def _read(self, chunks: Connection) -> None:
        try:
            while True:
                self.queue.put(pickle.loads(chunks.recv_bytes()))
        except (EOFError, OSError):
            self.queue.put(_STOP)

    def get(self) -> Chunk | None:
        chunk = self.queue.get()
        if chunk is _STOP:
            self.queue.put(_STOP)  # for the worker's other threads
        return chunk


class _Pipes(Pushed):
    """One worker thread's end of its worker's two pipes: the results of the worker's threads
    are sent whole, one at a time (``sending``)."""

    def __init__(self, inbox: _Inbox, results: Connection, sending: threading.Lock,
                 runner: ChunkRunner) -> None:
        self.inbox, self.results, self.sending, self.runner = inbox, results, sending, runner

    def receive(self) -> Message | None:
        chunk = self.inbox.get()
        return None if chunk is _STOP else Message((chunk,), self.runner)

    def publish(self, message: Message, results: Sequence[Result]) -> None:
        for result in results:
            data = pickle.dumps(result, pickle.HIGHEST_PROTOCOL)
            with self.sending:
                self.results.send_bytes(data)


def _die_with(coordinator: int) -> None:
    """Have the kernel kill this worker when its coordinator dies, at once rather than after
    its chunk: a resumed pass must not race the last chunk of a dead one (a file linked in, a
    directory's times set after the new pass set them). Stopping mid-chunk is safe: unnamed
    files vanish, and a redone chunk removes its temp names."""
    import ctypes  # here, not at import: the coordinator never needs it

    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != coordinator:  # it died before the kernel was asked
        os._exit(0)
