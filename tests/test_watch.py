"""``fsclone watch`` on real fanotify events: a writer changes SRC in every way users do while
the watcher runs as its own process; DST is faithful (our snapshot and rsync agree) within
5 s of the writer stopping. Also: a watcher killed mid-stream and started again, a queue
overflow answered with a full sync, the reverse watcher refused, a signal's clean stop."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fsclone.changes.fanotify import FanotifyFeed
from fsclone.errors import UsageError
from fsclone.state.directory import open_state_dir, pass_dir, pass_ids
from fsclone.state.lock import TargetLock
from fsclone.state.queries import read_errors
from fsclone.state.watch import WATCHING, read_status
from tests.clirun import fsclone, spawn
from tests.faultmount import faulty
from tests.fstree import build_hostile_tree
from tests.mounts import tmpfs
from tests.services import skip_or_fail, wait_for
from tests.watching import (
    Pair,
    churn,
    faithful,
    finish,
    start_watch,
    status,
    stop,
    watching,
)


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    """SRC and DST on two tmpfs (the watcher marks SRC's filesystem), SRC holding the
    hostile tree and a directory the writer works in; skipped where fanotify is not to be
    had, failed under CI."""
    with tmpfs(tmp_path / "a", "256m") as a, tmpfs(tmp_path / "b", "256m") as b:
        src = a / "src"
        src.mkdir()
        try:
            FanotifyFeed(str(src)).close()
        except UsageError as exc:
            skip_or_fail(str(exc))
        build_hostile_tree(src)
        (src / "live").mkdir()
        yield Pair(src, b / "dst", tmp_path / "state")


def test_dst_follows_every_kind_of_change(pair: Pair) -> None:
    proc = start_watch(pair)
    watching(pair, proc)
    writer = churn(pair, changes=1500, rate=500, seed=1)
    finish(writer)
    faithful(pair)
    s = status(pair)
    assert s is not None and s.events > 0 and not s.last_gap_at
    err = stop(proc)
    assert "stopped by SIGTERM" in err
    assert (s := status(pair)) is not None and s.state == "stopped"


def test_a_killed_watcher_started_again_loses_nothing(pair: Pair) -> None:
    proc = start_watch(pair)
    first = watching(pair, proc)
    writer = churn(pair, changes=3000, rate=500, seed=2)
    wait_for(lambda: (s := status(pair)) and s.events > 500, 30, "events flowing")
    proc.kill()  # mid-stream: with a batch out, or records half written
    proc.communicate(timeout=30)
    (pair.src / "while-down").write_bytes(b"no watcher saw this")  # where the writer is not
    assert (s := status(pair)) is not None and s.shown_state().startswith("dead")
    again = start_watch(pair)
    watching(pair, again, since=first.last_full_sync or 0.0)
    finish(writer)
    faithful(pair)
    stop(again)


def test_an_overflow_brings_a_full_sync(pair: Pair) -> None:
    """Past the kernel's queue of 16384 events (the watcher stopped with SIGSTOP meanwhile),
    the events lost are answered with a full sync, said in the log and the status."""
    proc = start_watch(pair)
    first = watching(pair, proc)
    proc.send_signal(signal.SIGSTOP)
    try:
        burst = pair.src / "live" / "burst"
        burst.mkdir()
        for i in range(20000):  # an event each
            os.mknod(burst / f"n{i}")
        for i in range(0, 20000, 3):
            os.unlink(burst / f"n{i}")
    finally:
        proc.send_signal(signal.SIGCONT)
    after = watching(pair, proc, since=first.last_full_sync or 0.0)
    assert after.last_gap_at and "overflow" in after.last_gap
    faithful(pair)
    err = stop(proc)
    assert "events were lost (fanotify's queue overflowed" in err
    assert "full sync" in err


def test_the_reverse_watcher_is_refused_while_this_one_runs(pair: Pair) -> None:
    proc = start_watch(pair)
    watching(pair, proc)
    back = fsclone("watch", pair.dst, pair.src, state=pair.state, timeout=60)
    lines = back.stderr.decode().strip().splitlines()
    assert back.returncode == 2 and len(lines) == 1, back.stderr
    assert "the reverse watcher" in lines[0] and "is running" in lines[0]
    stop(proc)
    # once it stopped, the way back is free: the failover's restore
    back_proc = spawn("watch", pair.dst, pair.src, "--workers", "2", state=pair.state)
    wait_for(lambda: (s := read_status(pair.state, str(pair.dst), str(pair.src)))
             and s.state == WATCHING, 60, "the reverse watcher")
    stop(back_proc)


def test_status_shows_the_watcher(pair: Pair) -> None:
    proc = start_watch(pair)
    watching(pair, proc)
    (pair.src / "live" / "one").write_bytes(b"1")
    wait_for(lambda: (s := status(pair)) and s.events > 0 and s.pending == 0, 10,
             "the change applied")
    out = fsclone("status", state=pair.state).stdout.decode()
    head, body = out.splitlines()[:2]
    assert head.startswith(f"watch  watching  {pair.src} -> {pair.dst}")
    assert "events seen; 0 directories pending; lag 0.0s; last full sync" in body
    stop(proc)


def test_a_hard_link_made_in_another_directory(pair: Pair) -> None:
    """A new name, in a directory of its own, for a file DST has had since the full sync."""
    (pair.src / "live" / "a").mkdir()
    (pair.src / "live" / "b").mkdir()
    (pair.src / "live" / "b" / "old").write_bytes(b"linked")
    proc = start_watch(pair)
    watching(pair, proc)
    os.link(pair.src / "live" / "b" / "old", pair.src / "live" / "a" / "new")
    faithful(pair)
    with open(pair.src / "live" / "a" / "new", "ab") as f:
        f.write(b" and changed through one name")
    faithful(pair)
    stop(proc)


def test_items_that_failed_are_taken_again(tmp_path: Path) -> None:
    """A target that fails an item's xattrs (faultfs, EIO): the batch lists it, and once the
    target is well again the item goes over, with no new event to bring it."""
    with tmpfs(tmp_path / "a", "64m") as a, tmpfs(tmp_path / "b", "64m") as b, \
            faulty(b, "dst") as (dst, fs):
        src = a / "src"
        (src / "live").mkdir(parents=True)
        p = Pair(src, dst, tmp_path / "state")
        proc = start_watch(p)
        watching(p, proc)
        fs.fail("SETXATTR", "EIO", path="live/*")
        victim = src / "live" / "victim"
        victim.write_bytes(b"data")
        os.setxattr(victim, "user.k", b"v")

        def failed() -> bool:
            return any(read_errors(pass_dir(p.state, i)) for i in pass_ids(p.state))
        wait_for(failed, 30, "the batch to list the item")
        fs.clear()
        faithful(p)
        stop(proc)


def test_a_target_another_pass_holds_is_waited_for(pair: Pair) -> None:
    """A site's own pass on DST holds the target's lock: the batch waits for it to end, the
    watcher does not stop."""
    proc = start_watch(pair)
    watching(pair, proc)
    lock = TargetLock(open_state_dir(pair.state), str(pair.dst))
    lock.acquire("a pass of the site's own")
    try:
        (pair.src / "live" / "while-locked").write_bytes(b"x")
        made = time.time()
        wait_for(lambda: (s := status(pair)) and s.pending and s.updated > made + 2, 30,
                 "a batch tried while the target is held")
        assert proc.poll() is None, proc.communicate()[1].decode(errors="replace")
    finally:
        lock.release()
    faithful(pair)
    assert "another pass is running on this target" in stop(proc)
