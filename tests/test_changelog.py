"""The Lustre changelog feed end to end, with ``lfs`` played by tests/lfs_standin.py (no Lustre
runs here): a real tmpfs SRC is changed, each change written to the stand-in's changelog as
Lustre records it, and ``pass sync --changes`` brings DST to what rsync calls the same; the
records are cleared only once that pass is done, a gap or a deregistered changelog user sends
the pair back to a full sync."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fsclone.changes.changelog import ChangelogFeed
from fsclone.changes.feed import DirtyDir, FeedGap
from tests.clirun import fsclone, fsclone_env
from tests.fstree import assert_rsync_clean, assert_same_tree
from tests.lustre import MDT, MDTS, USER, Lustre, build_tree, every_change, lustre_tree
from tests.midpass import held
from tests.services import wait_for


@pytest.fixture
def lustre(tmp_path: Path) -> Iterator[tuple[Lustre, Path, Path, Path]]:
    with lustre_tree(tmp_path) as found:
        yield found


def _sync(src: Path, dst: Path, state: Path, fs: Lustre,
          *flags: str) -> subprocess.CompletedProcess[bytes]:
    return fsclone("pass", "sync", *flags, "--workers", "2", src, dst, state=state,
                   lfs=fs.lfs, changelog_users=fs.users)


def _synced_once(fs: Lustre, src: Path, dst: Path, state: Path) -> None:
    build_tree(src)
    fs.tables()
    done = _sync(src, dst, state, fs)
    assert done.returncode == 0, done.stderr.decode()
    # the full pass read every changelog to its record 1, and cleared it
    assert fs.clears() == [f"{mdt} {USER} 1" for mdt in MDTS]
    assert fs.cleared() == dict.fromkeys(MDTS, 1)


def test_changes_from_the_changelog_make_dst_faithful(
        lustre: tuple[Lustre, Path, Path, Path]) -> None:
    fs, src, dst, state = lustre
    _synced_once(fs, src, dst, state)
    every_change(fs, src, src.parent.parent)
    done = _sync(src, dst, state, fs, "--changes")
    assert done.returncode == 0, done.stderr.decode()
    assert_same_tree(src, dst)
    assert_rsync_clean(src, dst)
    assert not (dst / "other").exists() and not (dst.parent / "other").exists()
    assert fs.last[MDTS[1]] > 1  # both changelogs had records
    assert fs.cleared() == fs.last  # cleared once the pass was done
    again = _sync(src, dst, state, fs, "--changes")  # nothing new: nothing to do
    assert again.returncode == 0, again.stderr.decode()


def test_records_are_cleared_only_after_their_work_is_done(
        lustre: tuple[Lustre, Path, Path, Path]) -> None:
    fs, src, dst, state = lustre
    _synced_once(fs, src, dst, state)
    fs.create(src / "a" / "held", os.urandom(1 << 20))
    fs.tables()
    with held(src / "a" / "held") as lease:
        run = subprocess.Popen(
            [sys.executable, "-m", "fsclone", "pass", "sync", "--changes", "--workers", "2",
             str(src), str(dst)], env=fsclone_env(state, **fs.settings()),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_for(lease.breaking, 60, "the pass to open the held file")
        os.killpg(run.pid, signal.SIGKILL)
        run.wait(30)
    assert fs.cleared() == dict.fromkeys(MDTS, 1)  # killed before done: nothing more cleared
    assert not (dst / "a" / "held").exists()
    done = _sync(src, dst, state, fs, "--changes")  # does what the killed pass took again
    assert done.returncode == 0, done.stderr.decode()
    assert_same_tree(src, dst)
    assert fs.cleared() == fs.last


@pytest.mark.parametrize("loss", ["gap", "deregistered"])
def test_lost_records_send_the_pair_back_to_a_full_sync(
        lustre: tuple[Lustre, Path, Path, Path], loss: str) -> None:
    fs, src, dst, state = lustre
    _synced_once(fs, src, dst, state)
    fs.create(src / "a" / "one")
    lost = fs.last[MDT]
    fs.create(src / "a" / "two")
    fs.tables()
    if loss == "gap":
        fs.lose(lost)
    else:
        fs.deregister()
    refused = _sync(src, dst, state, fs, "--changes")
    assert refused.returncode == 2
    said = refused.stderr.decode()
    assert "events were lost" in said and "run a full pass sync" in said, said
    assert ("records are missing" if loss == "gap" else "is gone (deregistered)") in said
    if loss == "deregistered":  # the admin registers it again, at the current record
        users = json.loads((fs.where / "users.json").read_text())
        (fs.where / "users.json").write_text(json.dumps({**users, MDT: {USER: fs.last[MDT]}}))
    full = _sync(src, dst, state, fs)
    assert full.returncode == 0, full.stderr.decode()
    assert_same_tree(src, dst)
    fs.create(src / "a" / "three")
    fs.tables()
    done = _sync(src, dst, state, fs, "--changes")
    assert done.returncode == 0, done.stderr.decode()
    assert_same_tree(src, dst)
    assert_rsync_clean(src, dst)


def test_the_feed_reads_from_its_cursor_and_says_a_gap(
        lustre: tuple[Lustre, Path, Path, Path]) -> None:
    fs, src, _, _ = lustre
    (src / "d").mkdir()
    fs.tables()
    users = dict.fromkeys(MDTS, USER)
    feed = ChangelogFeed(shlex.split(fs.lfs), users, str(src), None)
    cursor = feed.mark()
    assert json.loads(cursor) == {mdt: [1, 0] for mdt in MDTS}
    fs.mkdir(src / "d" / "e")
    fs.create(src.parent.parent / "other" / "x")
    fs.mkdir(src.parent / "src2")  # a sibling whose name starts with SRC's
    fs.create(src.parent / "src2" / "x")
    fs.tables()
    again = ChangelogFeed(shlex.split(fs.lfs), users, str(src), cursor)
    assert again.read(0) == [DirtyDir(b"d", False), DirtyDir(b"d/e", True)]
    assert again.read(0) == []  # read past already, not yet cleared
    assert fs.clears() == [] and fs.cleared() == dict.fromkeys(MDTS, 0)
    again.commit(again.cursor())
    assert fs.clears() == [f"{mdt} {USER} {fs.last[mdt]}" for mdt in MDTS]
    assert fs.cleared() == fs.last
    fs.create(src / "d" / "f")
    fs.create(src / "d" / "g")
    fs.lose(fs.last[MDT] - 1)
    with pytest.raises(FeedGap, match="records are missing"):
        again.read(0)
