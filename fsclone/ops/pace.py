"""A worker's share of the pass's limits (``--bwlimit``, ``--max-rate``).

The coordinator hands out the budget: it runs at most ``rate_slots`` chunks at a time while a
limit is set (fsclone.engine.coordinator), and each running chunk may take one slot's share
of each limit. A chunk that gets ahead of its share waits, as it goes (after each entry of a
directory) and before it answers; so the pass as a whole, however many workers serve it,
stays under the limits.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from fsclone.spec import PassSpec
from fsclone.stats import counters as C

#: what counts against ``--bwlimit`` (bytes written, and bytes a verify reads) and against
#: ``--max-rate`` (entries looked at, and entries removed)
_BYTES = (C.BYTES, C.HASHED)
_FILES = (C.SCANNED, C.DELETED)


class Pace:
    """One slot's share of the limits, for the chunk a worker runs now."""

    def __init__(self, spec: PassSpec) -> None:
        slots = max(spec.rate_slots, 1)
        self.bytes_per_s = spec.bwlimit / slots if spec.bwlimit else 0.0
        self.files_per_s = spec.max_rate / slots if spec.max_rate else 0.0
        self.started = time.monotonic()

    @classmethod
    def of(cls, spec: PassSpec) -> Pace | None:
        """None when the pass has no limit (nothing to check on the way)."""
        return cls(spec) if spec.bwlimit or spec.max_rate else None

    def start(self) -> None:
        self.started = time.monotonic()

    def wait(self, counters: Mapping[str, int]) -> None:
        """Wait until what the chunk did so far (``counters``) is within its share."""
        due = 0.0
        if self.bytes_per_s:
            due = sum(counters.get(k, 0) for k in _BYTES) / self.bytes_per_s
        if self.files_per_s:
            due = max(due, sum(counters.get(k, 0) for k in _FILES) / self.files_per_s)
        ahead = self.started + due - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
