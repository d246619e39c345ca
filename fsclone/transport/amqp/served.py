"""The passes one AMQP worker serves: which announced pass it takes (its node's
``ALLOWED_ROOTS``, roots it can open), and why it ignores the others, said once."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from fsclone.engine.worker import ChunkRunner
from fsclone.spec import PassSpec
from fsclone.transport.amqp import wire
from fsclone.transport.amqp.allowed import Roots, admitted

log = logging.getLogger("fsclone.amqp")
#: the most reasons to ignore an announcement that a worker remembers having logged
_TOLD = 1000


@dataclass
class Served:
    """A pass this worker serves."""

    spec: PassSpec
    queues: wire.Queues
    runner: ChunkRunner
    seen: float  # when it was last announced (monotonic)
    tag: str | None = None  # our consumer tag while we take its chunks
    ended: bool = False


class Passes:
    """The passes served (by id), and those refused for good."""

    def __init__(self, name: str, key: bytes, allowed: Roots) -> None:
        self.name, self.key, self.allowed = name, key, allowed
        self.served: dict[str, Served] = {}
        self.refused: set[str] = set()  # not allowed here, or roots we cannot open
        self.told: set[str] = set()  # why announcements were ignored, each logged once

    def tell(self, line: str) -> None:
        """Log why a pass is ignored, once (its announcements come every few seconds; a flood
        of made-up ones is remembered up to a point, then logged again)."""
        if line not in self.told:
            if len(self.told) >= _TOLD:
                self.told.clear()
            self.told.add(line)
            log.warning("%s", line)

    def open(self, announced: PassSpec) -> Served | None:
        """Serve ``announced`` if this node allows its roots and can open them."""
        spec, why = admitted(announced, self.allowed)
        if spec is None:
            self.tell(f"ignoring pass {announced.id} ({announced.op} {announced.src!r} -> "
                      f"{announced.dst!r}): {why}")
            self.refused.add(announced.id)
            return None
        try:
            runner = ChunkRunner(spec, self.name, self.key)
        except OSError as exc:
            log.error("cannot serve pass %s: %s: %s", spec.id, exc.filename, exc.strerror)
            self.refused.add(spec.id)
            return None
        served = Served(spec, wire.Queues.of(spec.id), runner, time.monotonic())
        self.served[spec.id] = served
        log.info("serving pass %s: %s %s -> %s", spec.id, spec.op, spec.src, spec.dst)
        return served
