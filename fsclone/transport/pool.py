"""A supervisor for long-running worker processes (``fsclone worker``).

Each child runs one :class:`Service`. A child that dies (a chunk that crashes it, the OOM
killer) is replaced; one that exits with :data:`FATAL` (the broker refused us) stops them all.
SIGTERM or SIGINT to the supervisor asks every child to drain; a second one makes them leave at
once (whatever they held is given back by the broker, unacknowledged).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import sys
import time
from collections.abc import Callable
from multiprocessing.connection import wait
from multiprocessing.context import ForkProcess
from types import FrameType
from typing import Protocol

log = logging.getLogger("fsclone.pool")

FATAL = 2
#: seconds before a dead child is replaced
RESPAWN_DELAY = 1.0


class Service(Protocol):
    def run(self) -> int: ...

    def stop(self) -> None: ...


def _child(make: Callable[[int], Service], index: int) -> None:
    service = make(index)
    asked = False

    def on_term(signum: int, frame: FrameType | None) -> None:
        nonlocal asked
        if asked:
            os._exit(128 + signum)
        asked = True
        service.stop()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's ^C reaches us via the parent
    sys.exit(service.run())


class _Pool:
    def __init__(self, make: Callable[[int], Service]) -> None:
        self.make = make
        self.ctx = mp.get_context("fork")
        self.children: dict[int, ForkProcess] = {}
        self.stopping = False
        self.code = 0

    def spawn(self, index: int) -> None:
        proc = self.ctx.Process(target=_child, args=(self.make, index),
                                name=f"fsclone-worker-{index}")
        proc.start()
        self.children[index] = proc

    def stop(self, signum: int = signal.SIGTERM, frame: FrameType | None = None) -> None:
        self.stopping = True
        for proc in self.children.values():
            if proc.pid and proc.exitcode is None:
                os.kill(proc.pid, signal.SIGTERM)

    def reap(self) -> None:
        for index, proc in list(self.children.items()):
            if proc.exitcode is None:
                continue
            del self.children[index]
            if self.stopping:
                continue
            if proc.exitcode == FATAL:
                self.code = FATAL
                self.stop()
            else:
                log.warning("worker %d exited (%s); starting another", index, proc.exitcode)
                time.sleep(RESPAWN_DELAY)  # so a crash loop does not spin
                if not self.stopping:
                    self.spawn(index)


def run_pool(size: int, make: Callable[[int], Service]) -> int:
    """Run ``size`` services until all have drained; FATAL if one of them failed fatally."""
    pool = _Pool(make)
    signal.signal(signal.SIGTERM, pool.stop)
    signal.signal(signal.SIGINT, pool.stop)
    for index in range(size):
        pool.spawn(index)
    while pool.children:
        wait([p.sentinel for p in pool.children.values()], timeout=RESPAWN_DELAY)
        pool.reap()
    return pool.code
