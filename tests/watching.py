"""What the watcher tests share: a pair of roots on tmpfs, a watcher started as its own
process and stopped, its status, and DST checked faithful to SRC."""

from __future__ import annotations

import multiprocessing
import signal
import subprocess
from dataclasses import dataclass
from multiprocessing.context import ForkProcess
from pathlib import Path

from fsclone.state.watch import WATCHING, WatchStatus, read_status
from tests.churn import Churn
from tests.clirun import spawn
from tests.fstree import assert_rsync_clean, snapshot, tree_diffs
from tests.services import wait_for

#: DST must be faithful this long after the writer stops
FAITHFUL_WITHIN = 5.0


@dataclass
class Pair:
    src: Path
    dst: Path
    state: Path


def start_watch(p: Pair, *args: str) -> subprocess.Popen[bytes]:
    return spawn("watch", p.src, p.dst, "--workers", "2", *args, state=p.state)


def status(p: Pair) -> WatchStatus | None:
    return read_status(p.state, str(p.src), str(p.dst))


def watching(p: Pair, proc: subprocess.Popen[bytes], since: float = 0.0) -> WatchStatus:
    """Wait until the watcher (``proc``) is past its full sync (one that started after
    ``since``) and watching."""
    def ready() -> WatchStatus | None:
        assert proc.poll() is None, proc.communicate()[1].decode(errors="replace")
        s = status(p)
        return s if s and s.pid == proc.pid and s.state == WATCHING and \
            (s.last_full_sync or 0) > since else None
    return wait_for(ready, 60, "the watcher's full sync")


def faithful(p: Pair) -> None:
    """DST is SRC, by our snapshot within the deadline (polled), then by rsync."""
    found: list[str] = []

    def same() -> bool:
        try:
            found[:] = tree_diffs(snapshot(p.src), snapshot(p.dst))
        except OSError as exc:  # the watcher at work: a temp file went, a file became a link
            found[:] = [f"{exc.filename!r} changed while read: {exc.strerror}"]
        return not found
    try:
        wait_for(same, FAITHFUL_WITHIN, "DST faithful", poll=0.2)
    except TimeoutError:
        raise AssertionError(f"{len(found)} differences after {FAITHFUL_WITHIN}s:\n"
                             + "\n".join(found[:30])) from None
    assert_rsync_clean(p.src, p.dst)


def churn(p: Pair, changes: int, rate: float, seed: int) -> ForkProcess:
    """The writer, a process of its own, changing SRC/live."""
    writer = multiprocessing.get_context("fork").Process(
        target=lambda: Churn(p.src / "live", seed).run(changes, rate), daemon=True)
    writer.start()
    return writer


def finish(writer: ForkProcess) -> None:
    writer.join(120)
    assert writer.exitcode == 0, "the writer failed"


def stop(proc: subprocess.Popen[bytes]) -> str:
    """SIGTERM the watcher; it exits 130, like a pass. Returns what it said on stderr."""
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode(errors="replace")
    return err.decode(errors="replace")
