"""How long one metadata request to a filesystem takes, measured at pass start: what decides
how many requests a pass keeps in flight (fsclone.transport.depth)."""

from __future__ import annotations

import os
import time

from fsclone.fs import dirs, fstype

#: stats timed per root: enough for a median that one scheduler hiccup does not move
_SAMPLES = 16


def nearest_existing(path: str) -> str:
    """``path``, or its nearest ancestor that exists (a target not made yet lives on the
    filesystem of its parent)."""
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


def stat_us(path: str) -> int:
    """The median time of a stat of ``path``, in µs (at least 1): a round trip where the
    client keeps no attributes (a FUSE mount without attribute caching, NFS with ``noac``), a
    cached answer elsewhere. Sorted by hand: importing ``statistics`` costs 7 ms a pass."""
    took = []
    for _ in range(_SAMPLES):
        start = time.perf_counter_ns()
        os.stat(path)
        took.append(time.perf_counter_ns() - start)
    return max(1, round(sorted(took)[_SAMPLES // 2] / 1000))


def probe(path: str) -> tuple[str, float]:
    """The kind of filesystem holding ``path`` (fs.fstype), or its nearest existing ancestor,
    and its :func:`stat_us`."""
    path = nearest_existing(path)
    fd = dirs.open_root(path)
    try:
        return fstype.fs_kind(fd), stat_us(path)
    finally:
        os.close(fd)
