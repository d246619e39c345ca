"""Every deletion is planned, counted and guarded: type swaps, names that look like fsclone's,
subtrees of any size or depth, counted and removed by chunks spread over the workers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from tests.clirun import fsclone, fsclone_as, fsclone_json
from tests.faultmount import faulty
from tests.fstree import assert_rsync_clean, assert_same_tree, entries_below, leftovers, subtree


def copied(tmp_path: Path, big: bool = True) -> tuple[Path, Path, Path]:
    """A source with a file ``keep`` (and a 201-entry directory ``big``), copied."""
    src, dst, state = tmp_path / "src", tmp_path / "dst", tmp_path / "state"
    if big:
        assert subtree(src / "big", 10, 19) == 201
    src.mkdir(exist_ok=True)
    (src / "keep").write_text("k")
    assert fsclone("pass", "copy", src, dst, state=state).returncode == 0
    return src, dst, state


def guarded(op: str, src: Path, dst: Path, state: Path, entries: int,
            below: int | None = None) -> dict[str, Any]:
    """Run ``op`` under a ``--max-delete`` short of ``entries`` (by default by one): it must
    refuse, naming ``entries``; then under ``--max-delete entries``: returns its summary."""
    limit = entries - 1 if below is None else below
    proc = fsclone("pass", op, "--max-delete", str(limit), src, dst, state=state)
    assert proc.returncode == 2, proc.stderr
    assert (f"would delete {entries} entries, more than --max-delete {limit}: nothing was "
            "deleted").encode() in proc.stderr
    rc, out = fsclone_json("pass", op, "--restart", "--max-delete", str(entries), src, dst,
                           state=state)
    assert rc == 0, out
    assert out["counters"]["deleted"] == entries
    return out


def swap_big_for_a_file(src: Path) -> None:
    shutil.rmtree(src / "big")
    (src / "big").write_text("a file now")


def test_sync_counts_the_subtree_a_type_swap_replaces(tmp_path: Path) -> None:
    src, dst, state = copied(tmp_path)
    swap_big_for_a_file(src)
    proc = fsclone("pass", "sync", "--max-delete", "0", src, dst, state=state)
    assert proc.returncode == 2, proc.stderr
    assert entries_below(dst / "big") == 200  # nothing deleted, not even by the copy step
    out = guarded("sync", src, dst, state, 201, below=0)
    assert out["counters"]["type_changed"] == 1
    assert_same_tree(src, dst)
    assert_rsync_clean(src, dst)


def test_copy_lists_a_type_swap_and_deletes_nothing(tmp_path: Path) -> None:
    src, dst, state = copied(tmp_path)
    swap_big_for_a_file(src)
    (src / "keep").unlink()
    (src / "keep").mkdir()
    rc, out = fsclone_json("pass", "copy", src, dst, state=state)
    assert rc == 0, out
    assert out["counters"]["type_changed"] == 2
    assert out["counters"].get("deleted", 0) == 0
    assert entries_below(dst / "big") == 200
    assert (dst / "keep").read_text() == "k"


def test_delete_removes_swapped_entries_under_the_guard(tmp_path: Path) -> None:
    src, dst, state = copied(tmp_path)
    swap_big_for_a_file(src)
    (src / "keep").unlink()
    (src / "keep").mkdir()
    (src / "keep/inside").write_text("i")
    guarded("delete", src, dst, state, 202)
    assert sorted(os.listdir(dst)) == []  # a delete pass makes nothing new
    assert fsclone("pass", "copy", src, dst, state=state).returncode == 0
    assert_same_tree(src, dst)
    assert_rsync_clean(src, dst)


def test_a_users_entry_named_like_a_temp_is_counted(tmp_path: Path) -> None:
    src, dst, state = copied(tmp_path, big=False)
    user = dst / ".fsclone-tmp.user-dir"
    user.mkdir()
    for i in range(300):
        (user / f"f{i}").write_text("the user's")
    # a temp file of a dead run: fsclone's own, removed without counting
    (dst / ".fsclone-tmp.20260101-000000-copy-abcdef.0123abcd.0123456789ab").write_text("t")
    proc = fsclone("pass", "sync", "--max-delete", "5", src, dst, state=state)
    assert proc.returncode == 2
    assert entries_below(user) == 300
    guarded("sync", src, dst, state, 301, below=5)
    assert leftovers(dst) == []
    assert_same_tree(src, dst)


def deep_tree(parent: Path, name: str, depth: int, file_every: int) -> int:
    """A chain of ``depth`` nested directories with a file every ``file_every`` levels, made
    through directory fds (its paths outgrow PATH_MAX); returns its entry count."""
    fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
    count = 0
    for level in range(depth):
        os.mkdir(name, dir_fd=fd)
        sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = sub
        count += 1
        if level % file_every == 0:
            os.close(os.open("file", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
            count += 1
    os.close(fd)
    return count


def test_a_very_deep_target_only_tree_is_counted_and_deleted(tmp_path: Path) -> None:
    src, dst, state = copied(tmp_path, big=False)
    try:
        entries = deep_tree(dst, "d", 2000, 100)
        assert entries == 2020
        out = guarded("sync", src, dst, state, entries)
        assert out["counters"].get("errors", 0) == 0
        assert_same_tree(src, dst)
    finally:  # pytest's own clean-up of old test directories recurses as deep as the tree
        subprocess.run(["rm", "-rf", "--", dst / "d"], check=True)


def test_a_subtree_is_counted_and_removed_by_a_chunk_per_directory(tmp_path: Path) -> None:
    src, dst, state = copied(tmp_path, big=False)
    entries = subtree(dst / "gone", 30, 4)
    chain = dst / "gone/c/c/c/c/c"  # walked down by one chunk, its files unlinked in slices
    chain.mkdir(parents=True)
    for i in range(7):
        (chain.parent / f"f{i}").write_text("f")
    entries += 5 + 7
    rc, out = fsclone_json("pass", "delete", src, dst, state=state, dir_slice=3)
    assert rc == 0, out
    assert out["counters"]["deleted"] == entries
    assert out["counters"]["delete_planned"] == entries
    # per directory of the subtree: one chunk counts it, and one prunes it and another the
    # second slice of its files, then the rmdir of the top, which waits for all of them
    assert out["counters"]["chunks_done"] >= 3 * 30
    assert sorted(os.listdir(dst)) == ["keep"]


def test_a_read_only_subtree_of_ones_own_is_deleted_without_root(tmp_path: Path) -> None:
    """As its owner, not root: a directory without u+w is made writable before its entries
    go (rm -rf does the same)."""
    uid = 1000
    with tempfile.TemporaryDirectory() as top:  # tmp_path's parents are root's alone
        root = Path(top)
        src, dst, state = root / "src", root / "dst", root / "state"
        (src / "keep").parent.mkdir()
        (src / "keep").write_text("k")
        subtree(dst / "gone", 3, 2)
        shutil.copy2(src / "keep", dst / "keep")
        for path in (root, *root.rglob("*")):
            os.chown(path, uid, uid)
        for sub in (dst / "gone", *(dst / "gone").iterdir()):
            sub.chmod(0o555)
        proc = fsclone_as(uid, uid, "pass", "delete", "--json", src, dst, state=state)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout.splitlines()[-1])["counters"]["deleted"] == 10
        assert sorted(os.listdir(dst)) == ["keep"]


def test_excluded_entries_inside_a_doomed_subtree_are_kept(tmp_path: Path) -> None:
    """As the README promises (and rsync does): an excluded target entry is never deleted,
    not even inside a directory that is going; that directory stays, holding it."""
    src, dst, state = tmp_path / "src", tmp_path / "dst", tmp_path / "state"
    src.mkdir()
    (src / "f").write_text("f")
    assert fsclone("pass", "copy", src, dst, state=state).returncode == 0
    (dst / "old/sub").mkdir(parents=True)
    (dst / "old/sub/keepme").write_text("protected")
    (dst / "old/sub/junk").write_text("goes")
    (dst / "old/junk").write_text("goes")
    rc, out = fsclone_json("pass", "sync", "--exclude", "keepme", src, dst, state=state)
    assert rc == 0, out
    assert (dst / "old/sub/keepme").read_text() == "protected"
    assert sorted(p.name for p in (dst / "old").rglob("*")) == ["keepme", "sub"]
    assert out["counters"]["deleted"] == 2


def test_a_subtree_that_could_not_be_counted_is_not_deleted_under_max_delete(
        tmp_path: Path) -> None:
    """A directory of a doomed subtree that fails to list while it is counted (a passing
    fault) leaves the plan short: --max-delete cannot be checked, so nothing goes."""
    with faulty(tmp_path, "dst") as (dst, fs):
        src, state = tmp_path / "src", tmp_path / "state"
        src.mkdir()
        (src / "f").write_text("f")
        assert fsclone("pass", "copy", src, dst, state=state).returncode == 0
        (dst / "old/sub").mkdir(parents=True)
        for i in range(50):
            (dst / f"old/sub/{i}").write_text("x")
        fs.fail("OPENDIR", "EIO", path="old/sub", count=2)  # both tries of the count
        proc = fsclone("pass", "sync", "--max-delete", "10", src, dst, state=state)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert b"could not be counted" in proc.stderr
        assert entries_below(dst / "old") == 51
