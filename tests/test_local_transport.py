"""The local transport's workers never outlive their coordinator."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from tests.clirun import descendants, spawn
from tests.midpass import held, many_files
from tests.services import wait_for


def test_workers_leave_when_the_coordinator_is_killed(tmp_path: Path) -> None:
    """At once, even one in the middle of a chunk: a resumed pass must not race what a dead
    pass's worker goes on doing. (Each forked worker also used to inherit the coordinator's
    ends of the pipes, so it never saw EOF and lived on after a SIGKILL.)"""
    src, state = many_files(tmp_path / "src"), tmp_path / "state"
    with held(src / "d039/f059") as lease:
        coordinator = spawn("pass", "copy", "--workers", "2", src, tmp_path / "dst", state=state)
        wait_for(lease.breaking, 60, "a worker to wait for the held file, mid-chunk", poll=0.01)
        workers = descendants(coordinator.pid)
        assert len(workers) == 2
        coordinator.send_signal(signal.SIGKILL)
        coordinator.wait()  # not communicate(): live workers would hold its output pipes open
        for pipe in (coordinator.stdout, coordinator.stderr):
            if pipe is not None:
                pipe.close()
        wait_for(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in workers), 30,
                 "the workers to leave, one of them mid-chunk")
