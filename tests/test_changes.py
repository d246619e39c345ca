"""Change-driven sync: ``pass sync --changes`` over the dirty directories a watcher recorded,
faithful by our snapshot's and rsync's judgement; refused without a trustworthy record;
never led outside the roots by a dirty path; the deletion guards of ``pass sync`` hold.

The watcher here is a stand-in: the test holds the pair's lock and records the dirty
directories each mutation makes, as the reduction of the feed's events would.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from fsclone.changes.feed import DirtyDir
from fsclone.changes.reduce import coalesce
from fsclone.config import Config
from fsclone.engine.coordinator import Hooks
from fsclone.engine.launch import PassRequest, run_changes, run_pass
from fsclone.errors import LockedError, MessageError
from fsclone.state.changes import ChangeStore, store_path
from fsclone.state.directory import open_state_dir
from fsclone.stats import counters as C
from fsclone.transport.memory import MemoryTransport
from tests.clirun import fsclone, fsclone_json
from tests.fstree import (
    assert_rsync_clean,
    assert_same_tree,
    build_hostile_tree,
    snapshot,
    tree_diffs,
)
from tests.mounts import read_only, tmpfs
from tests.services import wait_for


@pytest.fixture
def roots(tmp_path: Path) -> Iterator[tuple[Path, Path, Path]]:
    """SRC (the hostile tree) and DST on one tmpfs, and a state directory."""
    with tmpfs(tmp_path / "fs", "64m") as fs:
        src, dst = fs / "src", fs / "dst"
        src.mkdir()
        build_hostile_tree(src)
        yield src, dst, tmp_path / "state"


@contextmanager
def watching(state: Path, src: Path, dst: Path, feed: str = "fanotify",
             ) -> Iterator[ChangeStore]:
    """The pair's store held as a watcher holds it, its feed started now."""
    store = ChangeStore.open(open_state_dir(state), str(src), str(dst))
    store.hold("a test's watcher")
    store.feed_started(feed, resumed=False)
    try:
        yield store
    finally:
        store.close()


def sync(src: Path, dst: Path, state: Path, *flags: str) -> subprocess.CompletedProcess[bytes]:
    proc = fsclone("pass", "sync", *flags, src, dst, state=state)
    return proc


def _dirty(*paths: bytes, recursive: tuple[bytes, ...] = ()) -> list[DirtyDir]:
    return [DirtyDir(p, False) for p in paths] + [DirtyDir(p, True) for p in recursive]


def _mutate(src: Path) -> list[DirtyDir]:
    """Every kind of change the issue names, and the dirty directories each makes."""
    s = src
    (s / "files/new").write_bytes(b"created\n")  # create
    with open(s / "files/small", "ab") as f:  # append
        f.write(b"appended\n")
    os.truncate(s / "files/big", 1000)  # truncate
    os.unlink(s / "files/empty")  # delete a file
    os.rename(s / "perms/rw-r", s / "nest/l1/moved")  # rename a file across directories
    os.rename(s / "nest/l1/l2", s / "moved-dir")  # rename a whole directory
    shutil.rmtree(s / "dev")  # delete a whole directory
    os.chmod(s / "perms/setuid", 0o700)  # chmod a file, and a directory
    os.chmod(s / "emptydir", 0o700)
    os.setxattr(s / "files/acl", "user.added", b"xattr")  # xattr and ACL changes
    subprocess.run(["setfacl", "-m", "u:4321:r", s / "files/acl"], check=True)
    subprocess.run(["setfacl", "-m", "u:4321:rx", s / "acldir"], check=True)
    os.unlink(s / "files/sparse")  # type swaps: a file now a directory...
    (s / "files/sparse").mkdir()
    (s / "files/sparse/inside").write_bytes(b"in the new directory\n")
    shutil.rmtree(s / "nest/l1/sibling")  # ...a directory now a symlink
    os.symlink("../../files", s / "nest/l1/sibling")
    os.link(s / "links/a", s / "perms/third")  # a hard link: a third name of links/a
    return _dirty(b"files", b"perms", b"nest/l1", b"", b"dev", b"links",
                  recursive=(b"moved-dir", b"files/sparse"))


def test_changes_pass_mends_every_kind_of_change(roots: tuple[Path, Path, Path]) -> None:
    src, dst, state = roots
    with watching(state, src, dst) as store:
        rc, full = fsclone_json("pass", "sync", src, dst, state=state)
        assert rc == 0, full
        store.record(_mutate(src), b"cursor-1")
        rc, out = fsclone_json("pass", "sync", "--changes", src, dst, state=state)
        assert rc == 0, out
        assert store.pending() == []
        assert store.cursor() == b"cursor-1"
    assert_same_tree(src, dst, atime=False)
    assert_rsync_clean(src, dst)
    # only the dirty directories were listed: not the names, syms or ro directories
    clean = sum(len(os.listdir(src / d)) for d in ("names", "syms", "ro"))
    assert out["counters"][C.SCANNED] <= full["counters"][C.SCANNED] - clean


def test_a_clean_directory_is_not_walked(roots: tuple[Path, Path, Path]) -> None:
    """A dirty directory's chunk lists it alone: a change in a subdirectory nobody recorded
    is not seen (what makes a --changes pass cheap), while the subdirectory's own metadata,
    which its parent's listing shows, is mended."""
    src, dst, state = roots
    with watching(state, src, dst) as store:
        assert sync(src, dst, state).returncode == 0
        (src / "nest/l1/unrecorded").write_bytes(b"not recorded\n")
        os.chmod(src / "nest/l1", 0o711)
        store.record(_dirty(b"nest"), b"c")
        assert sync(src, dst, state, "--changes").returncode == 0
    assert not (dst / "nest/l1/unrecorded").exists()
    assert os.stat(dst / "nest/l1").st_mode & 0o777 == 0o711


def test_a_new_directory_below_a_missing_one_is_copied_whole(
        roots: tuple[Path, Path, Path]) -> None:
    """A dirty directory whose way down the target lacks is synced from its nearest ancestor
    that both trees have: the missing directories are made and copied whole."""
    src, dst, state = roots
    with watching(state, src, dst) as store:
        assert sync(src, dst, state).returncode == 0
        deep = src / "nest/new/a/b"
        deep.mkdir(parents=True)
        (deep / "f").write_bytes(b"deep\n")
        store.record(_dirty(b"nest/new/a/b"), b"c")  # the feed saw only the last event
        assert sync(src, dst, state, "--changes").returncode == 0
    assert_same_tree(src, dst, atime=False)


@pytest.mark.parametrize("case", ["no watcher", "not running", "gap", "no full sync",
                                  "dry run"])
def test_refused_without_a_trustworthy_record(roots: tuple[Path, Path, Path],
                                              case: str) -> None:
    src, dst, state = roots
    assert sync(src, dst, state).returncode == 0
    before = snapshot(dst)
    if case != "no watcher":
        with watching(state, src, dst) as store:
            if case == "gap":
                assert sync(src, dst, state).returncode == 0
                store.gap("the fanotify queue overflowed")
            elif case == "dry run":  # a dry run is no complete pass
                assert sync(src, dst, state, "--dry-run").returncode == 0
            elif case == "not running":
                assert sync(src, dst, state).returncode == 0
            store.record(_mutate(src), b"c")
            if case != "not running":
                proc = sync(src, dst, state, "--changes")
        if case == "not running":
            proc = sync(src, dst, state, "--changes")
    else:
        proc = sync(src, dst, state, "--changes")
    why = {"no watcher": "no watcher has recorded changes on these roots",
           "not running": "the fanotify watcher on these roots is not running",
           "gap": "events were lost (the fanotify queue overflowed)",
           "no full sync": "no complete pass sync since the watcher started recording",
           "dry run": "no complete pass sync since the watcher started recording"}[case]
    lines = proc.stderr.decode().strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and why in lines[0], proc.stderr
    assert snapshot(dst) == before


@pytest.mark.parametrize("path", [b"../outside", b"/etc", b"a//b", b"a/./b", b"a/", b"a\0b"])
def test_hostile_dirty_paths_are_refused(roots: tuple[Path, Path, Path], path: bytes) -> None:
    """A dirty path is data from events: one that is not a plain path below SRC is refused
    when it is recorded, and a record that holds one anyway (written by hand) refuses the
    pass with one line, nothing written."""
    src, dst, state = roots
    (dst.parent / "outside").mkdir()
    with watching(state, src, dst) as store:
        assert sync(src, dst, state).returncode == 0
        with pytest.raises(MessageError):
            store.record([DirtyDir(path, True)], b"c")
        assert store.pending() == []
        os.unlink(src / "files/empty")
        with sqlite3.connect(store_path(state, str(src), str(dst))) as db:
            db.execute("INSERT INTO pending (path, recursive) VALUES (?, 1)", (path,))
        before = snapshot(dst)
        proc = sync(src, dst, state, "--changes")
    assert proc.returncode == 2, proc.stderr
    assert b"is not one below SRC" in proc.stderr
    assert snapshot(dst) == before
    assert os.listdir(dst.parent / "outside") == []


def test_symlinks_on_a_dirty_path_lead_nowhere(roots: tuple[Path, Path, Path]) -> None:
    """A dirty path through a symlink (in the source, or one planted in the target) is synced
    from the nearest directory both trees have as a directory: nothing outside the roots is
    read or written."""
    src, dst, state = roots
    outside = dst.parent / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "sub/secret").write_bytes(b"not to be copied\n")
    with watching(state, src, dst) as store:
        assert sync(src, dst, state).returncode == 0
        os.symlink(outside, src / "lnk")
        shutil.rmtree(dst / "perms")
        os.symlink(outside, dst / "perms")  # planted in the target
        store.record(_dirty(b"lnk/sub", b"perms/sticky", recursive=(b"lnk/sub",)), b"c")
        assert sync(src, dst, state, "--changes").returncode == 0
    assert os.listdir(outside) == ["sub"] and os.listdir(outside / "sub") == ["secret"]
    assert os.path.islink(dst / "lnk") and not os.path.islink(dst / "perms")
    assert_same_tree(src, dst, atime=False)


def test_a_dirty_directory_keeps_the_deletion_guards(roots: tuple[Path, Path, Path]) -> None:
    """Deletions in dirty directories are planned and counted as a full sync's are:
    ``--max-delete`` refuses before anything goes, and the pending set stays for the next
    pass; an emptied source root refuses as well."""
    src, dst, state = roots
    with watching(state, src, dst) as store:
        assert sync(src, dst, state).returncode == 0
        shutil.rmtree(src / "names")
        store.record(_dirty(b"", b"names"), b"c")
        before = snapshot(dst)
        proc = sync(src, dst, state, "--changes", "--max-delete", "3")
        assert proc.returncode == 2 and b"--max-delete 3" in proc.stderr, proc.stderr
        # nothing deleted (the refused pass's cleanup gives the root its times, as a full
        # sync's does)
        assert tree_diffs(before, snapshot(dst), ignore_root_times=True) == []
        assert store.pending() == [DirtyDir(b"", False), DirtyDir(b"names", False)]
        for entry in os.listdir(src):
            path = src / entry
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        store.record(_dirty(b""), b"c2")
        proc = sync(src, dst, state, "--changes")
        assert proc.returncode == 2 and b"is empty but target" in proc.stderr, proc.stderr
        assert tree_diffs(before, snapshot(dst), ignore_root_times=True) == []


def test_what_failed_stays_pending(roots: tuple[Path, Path, Path]) -> None:
    """A --changes pass with item errors leaves the pending set as it was: the next pass
    does it again, and once done the set is empty."""
    src, dst, state = roots
    with watching(state, src, dst) as store:
        assert sync(src, dst, state).returncode == 0
        (src / "files/new").write_bytes(b"created\n")
        store.record(_dirty(b"files"), b"c")
        with read_only(dst / "files"):
            proc = sync(src, dst, state, "--changes")
        assert proc.returncode == 1, proc.stderr
        assert store.pending() == _dirty(b"files")
        assert sync(src, dst, state, "--changes").returncode == 0
        assert store.pending() == []
    assert_same_tree(src, dst, atime=False)


def test_a_directory_dirtied_during_a_pass_stays_pending(tmp_path: Path) -> None:
    """The pass removes only what it took: a directory recorded again after it took the set
    (the feed saw it change again) is still pending once the pass is done."""
    store = ChangeStore.open(open_state_dir(tmp_path), "/src", "/dst")
    store.record(_dirty(b"a", b"b"), b"1")
    assert store.take("pass-1") == _dirty(b"a", b"b")
    store.record(_dirty(b"b", recursive=(b"c",)), b"2")
    assert store.applied("pass-1") == 1
    assert store.pending() == _dirty(b"b", recursive=(b"c",))
    store.close()
    again = ChangeStore.find(tmp_path, "/src", "/dst")  # durable: another open sees it all
    assert again is not None and again.cursor() == b"2"
    assert again.pending() == _dirty(b"b", recursive=(b"c",))
    again.close()
    assert ChangeStore.find(tmp_path, "/src", "/other") is None


def test_one_watcher_per_pair(tmp_path: Path) -> None:
    state = open_state_dir(tmp_path)
    first = ChangeStore.open(state, "/src", "/dst")
    first.hold("the first watcher")
    second = ChangeStore.open(state, "/src", "/dst")
    assert second.watched()
    with pytest.raises(LockedError, match="the first watcher"):
        second.hold("the second")
    first.close()
    assert not second.watched()
    second.hold("the second")
    second.close()


def test_trust_follows_the_feed_and_the_last_complete_sync(tmp_path: Path) -> None:
    """Trustworthy only when the feed's unbroken run began before the last complete sync
    started, and it runs now (or can replay)."""
    store = ChangeStore.open(open_state_dir(tmp_path), "/src", "/dst")
    assert not store.trust(replayable=True).ok  # no feed yet
    store.feed_started("changelog", resumed=False)
    assert not store.trust(replayable=True).ok  # no complete sync since
    store.synced(time.time())
    assert store.trust(replayable=True).ok
    assert not store.trust(replayable=False).ok  # nobody watching, and no replay
    store.feed_started("changelog", resumed=True)  # a replay keeps the run going
    assert store.trust(replayable=True).ok
    store.gap("record 12 follows record 10")
    assert "record 12 follows record 10" in store.trust(replayable=True).why
    store.feed_started("changelog", resumed=True)
    assert not store.trust(replayable=True).ok  # a new run: a full sync must follow it
    store.close()


def test_coalesce_keeps_one_chunk_per_directory_and_none_below_a_recursive_one() -> None:
    dirs = [DirtyDir(b"a/b", False), DirtyDir(b"a", False), DirtyDir(b"a/b", True),
            DirtyDir(b"a/b/c", False), DirtyDir(b"a-b/c", False), DirtyDir(b"a/bc", False),
            DirtyDir(b"a/b/c/d", True), DirtyDir(b"x", False), DirtyDir(b"x", False)]
    assert coalesce(dirs) == [DirtyDir(b"a", False), DirtyDir(b"a-b/c", False),
                              DirtyDir(b"a/b", True), DirtyDir(b"a/bc", False),
                              DirtyDir(b"x", False)]
    assert coalesce([DirtyDir(b"", True), DirtyDir(b"a", True), DirtyDir(b"b", False)]) == [
        DirtyDir(b"", True)]
    assert coalesce([]) == []


@pytest.mark.parametrize("path", [b"../x", b"/x", b"a//b", b"a/./b", b"a/", b"a\0b", b"."])
def test_a_dirty_path_outside_src_is_refused(path: bytes) -> None:
    with pytest.raises(MessageError, match="is not one below SRC"):
        DirtyDir(path, False).relpath()
    assert DirtyDir(b"caf\xc3\xa9/\xff\xfe", False).relpath() == "café/\udcff\udcfe"


def test_nothing_pending_is_a_pass_of_nothing(roots: tuple[Path, Path, Path]) -> None:
    src, dst, state = roots
    with watching(state, src, dst):
        assert sync(src, dst, state).returncode == 0
        rc, out = fsclone_json("pass", "sync", "--changes", src, dst, state=state)
        assert rc == 0 and out["counters"].get(C.SCANNED, 0) == 0, out
        shutil.rmtree(dst)
        proc = sync(src, dst, state, "--changes")
    assert proc.returncode == 2 and b"No such file or directory" in proc.stderr, proc.stderr
    assert not dst.exists()


def test_a_watcher_runs_the_pass_in_process(roots: tuple[Path, Path, Path]) -> None:
    """What a watcher does after recording: ``run_changes`` through a transport it chose (the
    in-memory one here), the record trustworthy after its own full sync."""
    src, dst, state = roots
    cfg = Config(workers=2, state_dir=str(state))
    with watching(state, src, dst) as store:
        _, full = run_pass(cfg, PassRequest("sync", str(src), str(dst)), Hooks(),
                           MemoryTransport())
        assert full.status == "done" and full.error_count == 0
        store.record(_mutate(src), b"c")
        spec, summary = run_changes(cfg, str(src), str(dst), Hooks(), MemoryTransport())
        assert spec.changes and summary.status == "done" and summary.error_count == 0
        assert store.pending() == []
    assert_same_tree(src, dst, atime=False)


def test_a_dirty_directory_where_the_walk_would_not_go_is_left(
        roots: tuple[Path, Path, Path]) -> None:
    """A dirty directory below an excluded one, or on another filesystem with
    ``--one-file-system``, is left alone, as a full sync's walk leaves it."""
    src, dst, state = roots
    with tmpfs(src / "files/mnt", "1m") as mnt:
        (mnt / "other-fs").write_bytes(b"on another filesystem\n")
        with watching(state, src, dst) as store:
            assert sync(src, dst, state).returncode == 0
            (src / "names/new").write_bytes(b"excluded\n")
            (mnt / "new").write_bytes(b"on another filesystem\n")
            store.record(_dirty(b"names", b"files/mnt"), b"c")
            proc = sync(src, dst, state, "--changes", "--exclude", "/names", "-x")
            assert proc.returncode == 0, proc.stderr
        assert not (dst / "names/new").exists() and not (dst / "files/mnt/new").exists()
        assert (dst / "files/mnt/other-fs").exists()  # the full sync had no -x



@contextmanager
def hot_directory(tmp_path: Path, files: int) -> Iterator[tuple[Path, Path, Path, ChangeStore]]:
    """SRC with one directory ``hot`` of ``files`` files, synced to DST, the pair watched."""
    with tmpfs(tmp_path / "fs", "64m") as fs:
        src, dst, state = fs / "src", fs / "dst", tmp_path / "state"
        (src / "hot").mkdir(parents=True)
        for i in range(files):
            (src / "hot" / f"f{i:04}").write_bytes(b"x" * (i % 50))
        with watching(state, src, dst) as store:
            assert sync(src, dst, state).returncode == 0
            yield src, dst, state, store


def test_a_hot_directory_is_spread_over_every_slot(tmp_path: Path) -> None:
    """One dirty directory, eight chunks in flight: its listing is handed out in slices, so
    its entries are worked on eight at a time (on a network filesystem, a dozen round trips
    each), while every renamed file is still moved, not copied anew: the new names stay with
    the chunk that pairs them with the old ones."""
    with hot_directory(tmp_path, 1200) as (src, dst, state, store):
        for i in range(1200):
            f = src / "hot" / f"f{i:04}"
            if i % 3 == 0:
                f.write_bytes(b"rewritten %d\n" % i)
            elif i % 3 == 1:
                f.chmod(0o600)
            else:
                f.rename(f.with_name(f.name + ".r"))
        store.record(_dirty(b"hot"), b"c")
        rc, out = fsclone_json("pass", "sync", "--changes", "--depth", "8", src, dst,
                               state=state)
        assert rc == 0, out
        assert out["counters"][C.CHUNKS] >= 8, out["counters"]
        assert out["counters"][C.MOVED] == 400 and out["counters"][C.COPIED] == 400, out
        assert out["counters"].get(C.DELETED, 0) == 0
        assert_same_tree(src, dst, atime=False)
        assert_rsync_clean(src, dst)


def test_files_moved_by_a_spreading_chunk_are_compared_in_full(tmp_path: Path) -> None:
    """The moved files' metadata is compared by other chunks, which find the targets just
    linked (their ctimes now): an xattr a file gained before its rename, over a second before
    the pass, is still carried."""
    with hot_directory(tmp_path, 600) as (src, dst, state, store):
        for i in range(0, 600, 2):
            f = src / "hot" / f"f{i:04}"
            os.setxattr(f, "user.tag", b"gained %d" % i)
            f.rename(f.with_name(f.name + ".r"))
            (src / "hot" / f"f{i + 1:04}").chmod(0o600)
        renamed = os.lstat(src / "hot" / "f0598.r").st_ctime_ns
        wait_for(lambda: time.time_ns() > renamed + 2 * 10**9 or None, 10, "the clock")
        store.record(_dirty(b"hot"), b"c")
        rc, out = fsclone_json("pass", "sync", "--changes", "--depth", "8", src, dst,
                               state=state)
        assert rc == 0, out
        assert out["counters"][C.MOVED] == 300, out["counters"]
        assert out["counters"][C.SCANNED] == 600  # each name once, wherever compared
        assert os.getxattr(dst / "hot" / "f0598.r", "user.tag") == b"gained 598"
        assert_same_tree(src, dst, atime=False)
        assert_rsync_clean(src, dst)
