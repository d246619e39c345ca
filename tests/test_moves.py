"""A file the source renamed within its directory is renamed in the target by a sync, not
copied anew and deleted under its old name (fsclone.ops.moves): only when the target's file is
the same bytes, never over a type swap, an excluded name or a file of other links, and with its
metadata mended as any current file's."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.clirun import fsclone, fsclone_json
from tests.fstree import assert_rsync_clean, assert_same_tree
from tests.services import wait_for


def synced(tmp_path: Path, files: dict[str, bytes]) -> tuple[Path, Path, Path]:
    """A source of ``files`` (sharing one mtime, as a coarse clock gives them), synced."""
    src, dst, state = tmp_path / "src", tmp_path / "dst", tmp_path / "state"
    src.mkdir()
    for name, data in files.items():
        (src / name).write_bytes(data)
        os.utime(src / name, ns=(1_600_000_000 * 10**9, 1_600_000_000 * 10**9))
    assert fsclone("pass", "sync", src, dst, state=state).returncode == 0
    return src, dst, state


def sync(src: Path, dst: Path, state: Path, *opts: str) -> dict[str, Any]:
    rc, out = fsclone_json("pass", "sync", *opts, src, dst, state=state)
    assert rc in (0, 3), out  # 3: something changed
    return out


def inodes(root: Path) -> dict[str, int]:
    return {p.name: p.stat().st_ino for p in root.iterdir()}


def test_renamed_files_keep_their_target_inode_and_nothing_is_deleted(tmp_path: Path) -> None:
    files = {f"f{i}": b"same size %d" % i for i in range(6)} | {"empty": b""}
    src, dst, state = synced(tmp_path, files)
    before = inodes(dst)
    for name in files:
        os.rename(src / name, src / f"{name}.new")
    out = sync(src, dst, state)
    c = out["counters"]
    assert c.get("moved") == len(files)
    assert c.get("files_copied", 0) == 0 and c.get("delete_planned", 0) == 0
    assert c.get("deleted", 0) == 0
    assert_same_tree(src, dst)
    assert_rsync_clean(src, dst)
    assert inodes(dst) == {f"{n}.new": ino for n, ino in before.items()}


def test_a_file_of_the_same_size_and_mtime_but_other_bytes_is_copied(tmp_path: Path) -> None:
    src, dst, state = synced(tmp_path, {"old": b"AAAA"})
    (src / "old").unlink()
    (src / "new").write_bytes(b"BBBB")
    os.utime(src / "new", ns=(1_600_000_000 * 10**9, 1_600_000_000 * 10**9))
    out = sync(src, dst, state)
    assert out["counters"].get("moved", 0) == 0
    assert out["counters"]["files_copied"] == 1 and out["counters"]["deleted"] == 1
    assert (dst / "new").read_bytes() == b"BBBB"
    assert_rsync_clean(src, dst)


def test_a_rename_that_changed_the_metadata_too_is_mended(tmp_path: Path) -> None:
    src, dst, state = synced(tmp_path, {"a": b"data"})
    os.rename(src / "a", src / "b")
    os.chmod(src / "b", 0o600)
    os.setxattr(src / "b", "user.tag", b"v2")
    os.chown(src / "b", 1234, 5678)
    out = sync(src, dst, state)
    assert out["counters"]["moved"] == 1 and out["counters"]["updated"] == 1
    st = (dst / "b").stat()
    assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (0o600, 1234, 5678)
    assert os.getxattr(dst / "b", "user.tag") == b"v2"
    assert_same_tree(src, dst)
    assert_rsync_clean(src, dst)


def test_a_dry_run_tells_the_moves_and_changes_nothing(tmp_path: Path) -> None:
    src, dst, state = synced(tmp_path, {"a": b"data", "b": b""})
    os.rename(src / "a", src / "c")
    os.rename(src / "b", src / "d")
    proc = fsclone("pass", "sync", "--dry-run", src, dst, state=state)
    assert proc.returncode in (0, 3), proc.stderr
    assert b"move a -> c" in proc.stdout and b"move b -> d" in proc.stdout
    assert b"delete a" not in proc.stdout
    assert sorted(os.listdir(dst)) == ["a", "b"]


def test_renames_are_no_deletions_to_max_delete(tmp_path: Path) -> None:
    src, dst, state = synced(tmp_path, {"a": b"data"})
    os.rename(src / "a", src / "b")
    out = sync(src, dst, state, "--max-delete", "0")
    assert out["counters"]["moved"] == 1
    assert_rsync_clean(src, dst)


def test_a_type_swap_an_excluded_name_and_a_linked_file_are_not_moved(
        tmp_path: Path) -> None:
    src, dst, state = synced(tmp_path, {"swapped": b"s", "kept": b"k", "linked": b"l"})
    os.link(dst / "linked", tmp_path / "outside")  # another name holds the target's file
    for name in ("swapped", "kept", "linked"):
        os.rename(src / name, src / f"{name}.2")
    (src / "swapped").mkdir()  # the old name is a directory now
    out = sync(src, dst, state, "--exclude", "kept")
    c = out["counters"]
    assert c.get("moved", 0) == 0, c
    assert c["files_copied"] == 3
    assert (dst / "kept").read_bytes() == b"k"  # excluded: neither moved nor deleted
    assert (tmp_path / "outside").stat().st_nlink == 1  # its target name was deleted
    assert (dst / "swapped").is_dir()
    (dst / "kept").unlink()  # then the rest is the source's (the directory's times too)
    st = src.stat()
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert_rsync_clean(src, dst)


def test_an_immutable_target_file_is_copied_anew_and_its_name_deleted(
        tmp_path: Path) -> None:
    src, dst, state = synced(tmp_path, {"a": b"data"})
    subprocess.run(["chattr", "+i", dst / "a"], check=True)
    os.rename(src / "a", src / "b")
    out = sync(src, dst, state)
    assert out["counters"].get("moved", 0) == 0
    assert out["counters"]["files_copied"] == 1 and out["counters"]["deleted"] == 1
    assert_rsync_clean(src, dst)


def test_a_moved_file_is_compared_in_full_though_its_copy_looks_newer(tmp_path: Path) -> None:
    """The source's rename moves its ctime, so a moved file is compared in full anyway; but a
    target touched after it (an admin's chmod, a skewed server clock) would pass the untouched
    rule, and hide an xattr the source gained with the rename."""
    src, dst, state = synced(tmp_path, {"a": b"data"})
    os.setxattr(src / "a", "user.tag", b"new")
    os.rename(src / "a", src / "b")
    renamed = os.lstat(src / "b").st_ctime_ns
    wait_for(lambda: time.time_ns() > renamed + 2 * 10**9 or None, 10, "the clock")
    os.chmod(dst / "a", 0o644)  # its own mode: only its ctime moves, past the source's
    assert os.lstat(dst / "a").st_ctime_ns > renamed + 10**9
    out = sync(src, dst, state)
    assert out["counters"]["moved"] == 1
    assert os.getxattr(dst / "b", "user.tag") == b"new"
    assert_rsync_clean(src, dst)
