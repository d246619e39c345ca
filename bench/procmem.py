"""Peak memory of a whole process tree, sampled from /proc.

fsclone forks a coordinator and N workers, and rsync runs three processes, so the RSS of the
launched process alone would understate both; we walk the live tree every ~20 ms instead.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

KiB = 1 << 10


@dataclass
class MemPeak:
    """Peak of the summed VmRSS over the tree, and the largest single-process high-water mark."""

    sum_rss: int = 0
    max_single: int = 0
    max_procs: int = 0
    samples: int = 0


def _children(pid: int) -> list[int]:
    """Child pids of every thread of pid (empty if it has already gone)."""
    kids: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            kids.extend(int(c) for c in (task / "children").read_text().split())
    except (FileNotFoundError, ProcessLookupError):
        pass
    return kids


def tree_pids(root: int) -> list[int]:
    """root and all its descendants, found through /proc/<pid>/task/*/children."""
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo.extend(_children(pid))
    return pids


def _status_kib(pid: int, keys: tuple[str, ...]) -> dict[str, int]:
    """The named `Vm*` lines of /proc/<pid>/status, in bytes; {} if the process is gone."""
    found: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in keys:
                found[key] = int(value.split()[0]) * KiB
    except (FileNotFoundError, ProcessLookupError):
        pass
    return found


def sample(root: int, peak: MemPeak) -> None:
    """Fold one snapshot of the tree under root into peak. VmHWM (not VmRSS) feeds the
    single-process figure, so a spike between samples is still caught for that one."""
    pids = tree_pids(root)
    total = 0
    for pid in pids:
        vm = _status_kib(pid, ("VmRSS", "VmHWM"))
        total += vm.get("VmRSS", 0)
        peak.max_single = max(peak.max_single, vm.get("VmHWM", 0))
    peak.sum_rss = max(peak.sum_rss, total)
    peak.max_procs = max(peak.max_procs, len(pids))
    peak.samples += 1


def watch(proc: subprocess.Popen[bytes], interval: float = 0.02) -> MemPeak:
    """Sample proc's tree until it exits."""
    peak = MemPeak()
    while proc.poll() is None:
        sample(proc.pid, peak)
        time.sleep(interval)
    return peak
