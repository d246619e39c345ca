"""``fsclone watch`` on a Lustre source's changelogs (``CHANGELOG_USERS`` set), with ``lfs``
played by tests/lfs_standin.py (no Lustre runs here): the changes a test makes to a tmpfs SRC,
recorded as Lustre would, reach DST; records are cleared only once their batch is done; a
watcher killed and started again resumes from its cursor with no full sync; lost records are
answered with a full sync."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fsclone.state.watch import WATCHING, WatchStatus, read_status
from tests.clirun import spawn
from tests.lustre import MDT, MDTS, USER, Lustre, build_tree, every_change, lustre_tree
from tests.midpass import held
from tests.services import wait_for
from tests.watching import Pair, faithful, stop


@pytest.fixture
def lustre(tmp_path: Path) -> Iterator[tuple[Lustre, Pair]]:
    """The stand-in's Lustre, SRC holding a tree (its FIDs in the stand-in's table)."""
    with lustre_tree(tmp_path) as (fs, src, dst, state):
        build_tree(src)
        fs.tables()
        yield fs, Pair(src, dst, state)


def start(fs: Lustre, p: Pair) -> subprocess.Popen[bytes]:
    return spawn("watch", p.src, p.dst, "--workers", "2", state=p.state, lfs=fs.lfs,
                 changelog_users=fs.users)


def status(p: Pair) -> WatchStatus:
    s = read_status(p.state, str(p.src), str(p.dst))
    assert s is not None
    return s


def watching(p: Pair, proc: subprocess.Popen[bytes], full_since: float | None) -> WatchStatus:
    """Wait until ``proc`` watches: past a full sync that started after ``full_since``, or
    (None) with none needed."""
    def ready() -> WatchStatus | None:
        assert proc.poll() is None, proc.communicate()[1].decode(errors="replace")
        s = read_status(p.state, str(p.src), str(p.dst))
        if not s or s.pid != proc.pid or s.state != WATCHING:
            return None
        return s if full_since is None or (s.last_full_sync or 0) > full_since else None
    return wait_for(ready, 60, "the watcher watching")


def cleared_all(fs: Lustre) -> None:
    wait_for(lambda: fs.cleared() == fs.last, 10, "every record cleared")


def test_the_watcher_follows_the_changelogs(lustre: tuple[Lustre, Pair]) -> None:
    fs, p = lustre
    proc = start(fs, p)
    watching(p, proc, 0.0)  # no record yet: a full sync first
    assert fs.cleared() == dict.fromkeys(MDTS, 1)  # the end it read before the walk
    every_change(fs, p.src, p.src.parent.parent)
    faithful(p)
    cleared_all(fs)
    assert status(p).events >= sum(fs.last.values()) - len(MDTS)
    assert not (p.dst / "other").exists() and not (p.dst.parent / "other").exists()
    err = stop(proc)
    assert "(changelog)" in err and "resumes from the changelogs' cursor" in err


def test_idle_changelogs_are_polled_not_spun_on(lustre: tuple[Lustre, Pair]) -> None:
    """Every read of the changelogs checks each MDT's user with a clear of its last record
    (which the stand-in logs): an idle watcher makes one read a second."""
    fs, p = lustre
    proc = start(fs, p)
    watching(p, proc, 0.0)
    before, since = len(fs.clears()), time.monotonic()
    wait_for(lambda: len(fs.clears()) >= before + 3 * len(MDTS), 30, "three reads")
    assert time.monotonic() - since >= 1.5
    stop(proc)


def test_records_are_cleared_only_once_their_batch_is_done(
        lustre: tuple[Lustre, Pair]) -> None:
    """A batch held open on a file: its records stay; records read meanwhile are the next
    batch's, cleared only after it."""
    fs, p = lustre
    proc = start(fs, p)
    watching(p, proc, 0.0)
    fs.create(p.src / "a" / "held", os.urandom(1 << 20))
    fs.tables()
    first = fs.last[MDT]
    with held(p.src / "a" / "held") as lease:
        wait_for(lease.breaking, 30, "the batch to open the held file")
        seen = status(p).events
        fs.create(p.src / "a" / "during")
        fs.tables()
        wait_for(lambda: status(p).events >= seen + 2, 30, "the records read mid-batch")
        assert fs.cleared() == dict.fromkeys(MDTS, 1)  # the batch is not done
    faithful(p)
    cleared_all(fs)
    clears = fs.clears()
    assert f"{MDT} {USER} {first}" in clears, clears  # the first batch's own, no further
    assert clears[-1] == f"{MDT} {USER} {fs.last[MDT]}"
    stop(proc)


def test_a_killed_watcher_resumes_from_its_cursor(lustre: tuple[Lustre, Pair]) -> None:
    fs, p = lustre
    proc = start(fs, p)
    first = watching(p, proc, 0.0)
    fs.create(p.src / "a" / "before")
    faithful(p)
    proc.kill()
    proc.communicate(timeout=30)
    fs.create(p.src / "a" / "while down")  # only the changelog saw these
    fs.mkdir(p.src / "new dir")
    fs.create(p.src / "new dir" / "inside")
    fs.rename(p.src / "moved", p.src / "a" / "moved here")
    fs.unlink(p.src / "over")
    fs.tables()
    again = start(fs, p)
    watching(p, again, None)
    faithful(p)
    cleared_all(fs)
    assert status(p).last_full_sync == first.last_full_sync  # no full sync ran
    err = stop(again)
    assert "resuming from the changelog cursor: no full sync" in err
    assert "full sync of" not in err, err


@pytest.mark.parametrize("loss", ["gap", "deregistered"])
def test_lost_records_bring_a_full_sync(lustre: tuple[Lustre, Pair], loss: str) -> None:
    fs, p = lustre
    proc = start(fs, p)
    first = watching(p, proc, 0.0)
    proc.send_signal(signal.SIGSTOP)  # so the watcher reads none of them before they go
    try:
        fs.create(p.src / "a" / "one")
        lost = fs.last[MDT]
        fs.create(p.src / "a" / "two")
        fs.tables()
        if loss == "gap":
            fs.lose(lost)
        else:
            fs.deregister()
    finally:
        proc.send_signal(signal.SIGCONT)
    said = "records are missing" if loss == "gap" else "is gone (deregistered)"
    wait_for(lambda: said in status(p).last_gap, 30, "the gap in the status")
    if loss == "deregistered":
        # the full sync that follows reads from the changelogs' end, and its clear finds the
        # user still gone: a gap again, the watcher goes on
        def synced_again() -> bool:
            assert proc.poll() is None, proc.communicate()[1].decode(errors="replace")
            return (status(p).last_full_sync or 0) > (first.last_full_sync or 0)
        wait_for(synced_again, 30, "a full sync while the user is gone")
        # the admin registers it again, at the current record
        users = json.loads((fs.where / "users.json").read_text())
        (fs.where / "users.json").write_text(json.dumps({**users, MDT: {USER: fs.last[MDT]}}))
    watching(p, proc, first.last_full_sync)
    faithful(p)
    fs.create(p.src / "a" / "three")  # the feed reads on after the full sync
    fs.tables()
    faithful(p)
    cleared_all(fs)
    err = stop(proc)
    assert "events were lost (" in err and said in err, err
    assert "a full sync follows" in err and "full sync of" in err
