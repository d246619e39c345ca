"""A pass snapshot to feed the stats sinks in tests."""

from __future__ import annotations

from fsclone.stats.snapshot import Snapshot


def snap(n: int, status: str = "running") -> Snapshot:
    """The ``n``-th report of a two-worker pass: ``2 * n`` files copied."""
    return Snapshot(pass_id="20260101-000000-copy-abcdef", op="copy", src="/s", dst="/d",
                    status=status, phase="walk", started=1000.0, time=1000.0 + n,
                    counters={"files_copied": 2 * n}, workers={"node1.ib0.0": {"files_copied": n},
                                                               "node1.ib0.1": {"files_copied": n}},
                    outstanding=5, depth=3)
