"""How long one metadata request to a filesystem takes, measured at pass start: what decides
how many requests a pass keeps in flight (fsclone.transport.depth)."""

from __future__ import annotations

import os
import statistics
import time

from fsclone.fs import dirs, fstype

#: stats timed per root: enough for a median that one scheduler hiccup does not move
_SAMPLES = 5


def nearest_existing(path: str) -> str:
    """``path``, or its nearest ancestor that exists (a target not made yet lives on the
    filesystem of its parent)."""
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


def probe(path: str) -> tuple[str, float]:
    """The kind of filesystem holding ``path`` (fs.fstype) and the median time in µs of an
    ``fstat`` of its directory: a round trip where the client keeps no attributes (a FUSE
    mount without attribute caching, NFS with ``noac``), a cached answer elsewhere."""
    fd = dirs.open_root(nearest_existing(path))
    try:
        kind = fstype.fs_kind(fd)
        times = []
        for _ in range(_SAMPLES):
            start = time.perf_counter_ns()
            os.fstat(fd)
            times.append(time.perf_counter_ns() - start)
        return kind, statistics.median(times) / 1000
    finally:
        os.close(fd)
