"""Unmounted parts of the source are never taken as deleted; ``--one-file-system`` stays on
SRC's filesystem. Real tmpfs mounts, as root (tests.mounts)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from fsclone.engine import layout
from fsclone.fs import mounts
from fsclone.spec import PassSpec, as_flags, differences
from tests.clirun import fsclone, fsclone_json
from tests.fstree import assert_same_tree, entries_below, snapshot, subtree
from tests.mounts import loop_fs, tmpfs

SENTINEL = "SENTINEL"


def roots(tmp_path: Path) -> tuple[Path, Path, Path]:
    return tmp_path / "src", tmp_path / "dst", tmp_path / "state"


def run(op: str, src: Path, dst: Path, state: Path, *flags: str) -> tuple[int, dict[str, Any]]:
    return fsclone_json("pass", op, *flags, src, dst, state=state, sentinel=SENTINEL)


def guarded_lines(out: dict[str, Any], path: str) -> list[dict[str, Any]]:
    return [e for e in out["errors"] if e["path"] == path]


def test_mount_points_are_read_from_the_kernels_list(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    info = tmp_path / "mountinfo"
    info.write_bytes(b"".join(
        b"%d 1 0:%d / %s rw - tmpfs tmpfs rw\n" % (n, n, point) for n, point in enumerate([
            b"/", b"/data/src", b"/data/src/a\\040b", b"/data/src/x/y", b"/data/srcx",
            b"/data/src/\\303\\251"])))
    monkeypatch.setattr(mounts, "MOUNTINFO", str(info))
    assert mounts.mount_points_below("/data/src") == {"", "a b", "x/y", "\u00e9"}


def test_the_layout_keeps_a_mount_point_that_is_gone(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A pass that finds a mount point missing must not teach the next one to forget it."""
    seen = [{"", "sub"}, set(), {"other"}]
    monkeypatch.setattr(mounts, "mount_points_below", lambda root: seen.pop(0))
    assert layout.source_layout(tmp_path, "/src") == ("", "sub")
    assert layout.source_layout(tmp_path, "/src") == ("", "sub")
    assert layout.source_layout(tmp_path, "/src") == ("", "other", "sub")
    record = layout.layout_file(tmp_path, "/src")
    assert record.stat().st_mode & 0o777 == 0o600
    assert layout.recorded_mounts(tmp_path, "/elsewhere") == set()


def test_one_file_system_is_part_of_the_request_and_the_layout_is_not() -> None:
    """A resume is refused with another -x; the layout is what the pass found, kept with it."""
    stored = PassSpec(id="p", op="sync", src="/s", dst="/d", started=0, one_file_system=True,
                      source_mounts=("", "a b"))
    asked = PassSpec(id="q", op="sync", src="/s", dst="/d", started=1)
    assert differences(stored, asked) == ["--one-file-system"]
    assert differences(stored, replace(asked, one_file_system=True)) == []
    assert as_flags(stored) == ["--one-file-system"]
    assert PassSpec.from_wire(json.loads(json.dumps(stored.to_wire()))) == stored


def test_an_unmounted_source_root_with_a_stray_file_deletes_nothing(tmp_path: Path) -> None:
    """SRC a mount point at the copy, then unmounted: the directory below holds a README, so
    it is not empty, and no sentinel is set. A sync deleted all but that README."""
    src, dst, state = roots(tmp_path)
    src.mkdir()
    (src / "README").write_text("written while nothing was mounted")
    with tmpfs(src, "8m"):
        assert subtree(src / "data", 10, 14) == 151
        (src / "README").write_text("the real one")
        assert fsclone("pass", "copy", src, dst, state=state).returncode == 0
    assert entries_below(dst) == 152
    before = snapshot(dst)
    for op in ("sync", "delete"):
        proc = fsclone("pass", op, src, dst, state=state)
        assert proc.returncode == 2, proc.stdout
        assert f"source {src} was a mount point at earlier passes and is none now: is it " \
               "mounted? Nothing deleted".encode() in proc.stderr
        assert snapshot(dst) == before


@pytest.mark.parametrize("op", ["sync", "delete", "copy"])
@pytest.mark.parametrize("stray", [False, True], ids=["empty", "stray-file"])
def test_an_unmounted_sub_mount_keeps_its_target_subtree(tmp_path: Path, op: str,
                                                          stray: bool) -> None:
    """A filesystem mounted inside SRC, unmounted before the sync: its mount point is an
    empty directory (or holds a stray file) on SRC's filesystem, and the sentinel is in
    place. A sync deleted the whole copy of that filesystem (and a copy overwrote it with the
    stray file)."""
    src, dst, state = roots(tmp_path)
    (src / "sub").mkdir(parents=True)
    for name in (SENTINEL, "keep", "gone"):
        (src / name).write_text(name)
    if stray:
        (src / "sub/README").write_text("written while nothing was mounted")
    with tmpfs(src / "sub", "8m"):
        assert subtree(src / "sub/data", 10, 14) == 151
        assert run("copy", src, dst, state)[0] == 0
    (src / "gone").unlink()  # an ordinary deletion elsewhere still goes
    before = snapshot(dst / "sub")
    rc, out = run(op, src, dst, state)
    assert rc == 1, out
    assert snapshot(dst / "sub") == before
    assert entries_below(dst / "sub") == 151
    assert out["error_count"] == 1
    assert guarded_lines(out, "sub") == [{
        "path": "sub", "op": op, "errno": 0,
        "message": "was a mount point of the source at earlier passes and is none now (is it "
                   "mounted?): nothing below it copied or deleted"}]
    left = ["gone"] if op == "copy" else []  # a copy deletes nothing
    assert out["counters"].get("deleted", 0) == 1 - len(left)
    assert sorted(os.listdir(dst)) == sorted([SENTINEL, "keep", "sub", *left])


def test_an_empty_source_directory_over_a_target_mount_deletes_nothing(tmp_path: Path) -> None:
    """The same layout on both sides, no earlier pass recorded (another state directory): the
    source's sub-mount is not mounted, the target's is. Its empty mount point is no sign of
    a user's deletions."""
    src, dst, state = roots(tmp_path)
    (src / "sub").mkdir(parents=True)
    (src / SENTINEL).write_text("s")
    with tmpfs(dst / "sub", "8m"):
        with tmpfs(src / "sub", "8m"):
            subtree(src / "sub/data", 3, 5)
            assert run("copy", src, dst, state)[0] == 0
        before = snapshot(dst / "sub")
        rc, out = run("sync", src, dst, tmp_path / "other-state")
        assert rc == 1, out
        assert [e["message"] for e in guarded_lines(out, "sub")] == [
            "the target directory is a mount point and its source an empty directory (is the "
            "source's filesystem mounted?): nothing below it deleted"]
        assert snapshot(dst / "sub") == before
        assert entries_below(dst / "sub") == 19


def test_an_empty_filesystem_mounted_in_the_source_deletes_nothing(tmp_path: Path) -> None:
    """An empty filesystem mounted over a copied source directory (a fresh one, an automount
    not triggered): the listing is complete, and empty."""
    src, dst, state = roots(tmp_path)
    subtree(src / "sub", 3, 5)
    (src / SENTINEL).write_text("s")
    assert run("copy", src, dst, state)[0] == 0
    with tmpfs(src / "sub", "1m"):
        rc, out = run("sync", src, dst, state)
        assert rc == 1, out
        assert [e["message"] for e in guarded_lines(out, "sub")] == [
            "the source directory is an empty mounted filesystem while its target is not "
            "empty (a fresh mount or an automount?): nothing below it deleted"]
    assert entries_below(dst / "sub") == 18


def test_deletions_in_and_around_mounted_filesystems_go_ahead(tmp_path: Path) -> None:
    """A user's deletions inside a mounted sub-filesystem, an emptied directory in it and one
    on SRC's own filesystem: all deleted, as ever."""
    src, dst, state = roots(tmp_path)
    (src / "sub").mkdir(parents=True)
    (src / SENTINEL).write_text("s")
    subtree(src / "plain", 2, 3)
    with tmpfs(src / "sub", "8m"):
        subtree(src / "sub/data", 3, 5)
        (src / "sub/file").write_text("f")
        assert run("copy", src, dst, state)[0] == 0
        for emptied in (src / "sub/data/d0", src / "plain/d1"):
            shutil.rmtree(emptied)
            emptied.mkdir()
        (src / "sub/file").unlink()
        rc, out = run("sync", src, dst, state)
        assert rc == 0, out
        assert out["counters"]["deleted"] == 5 + 3 + 1
        assert_same_tree(src, dst)


def test_a_target_mount_point_is_not_deleted_through(tmp_path: Path) -> None:
    """A filesystem mounted in the target where the source has nothing: its contents are not
    the source's copy, and the deletion stops at its mount point."""
    src, dst, state = roots(tmp_path)
    src.mkdir()
    for name in (SENTINEL, "keep", "gone"):
        (src / name).write_text(name)
    assert run("copy", src, dst, state)[0] == 0
    (src / "gone").unlink()
    with tmpfs(dst / "mounted", "8m"):
        subtree(dst / "mounted/data", 3, 5)
        rc, out = run("sync", src, dst, state)
        assert rc == 1, out
        assert [e["message"] for e in guarded_lines(out, "mounted")] == [
            "is a mount point on the target: not deleted through"]
        assert entries_below(dst / "mounted") == 19
        assert out["counters"]["deleted"] == 1


def test_a_deletion_stops_at_a_mount_point_deep_in_its_subtree(tmp_path: Path) -> None:
    src, dst, state = roots(tmp_path)
    src.mkdir()
    (src / SENTINEL).write_text("s")
    subtree(src / "gone", 2, 2)
    assert run("copy", src, dst, state)[0] == 0
    shutil.rmtree(src / "gone")
    with tmpfs(dst / "gone/d1/inner", "8m"):
        subtree(dst / "gone/d1/inner/data", 3, 5)
        rc, out = run("sync", src, dst, state)
        assert rc == 1, out
        assert out["errors"] == [{"path": "gone/d1/inner", "op": "count", "errno": 0,
                                  "message": "is a mount point on the target: not deleted "
                                             "through"}]
        assert entries_below(dst / "gone/d1/inner") == 19
        assert sorted(os.listdir(dst / "gone")) == ["d1"]  # the rest of the subtree went
        assert sorted(os.listdir(dst / "gone/d1")) == ["inner"]


def test_one_file_system_skips_nested_mounts_on_every_pass(tmp_path: Path) -> None:
    src, dst, state = roots(tmp_path)
    (src / "sub").mkdir(parents=True)
    (src / SENTINEL).write_text("s")
    with tmpfs(src / "sub", "8m"):
        subtree(src / "sub/data", 3, 5)
        rc, out = run("copy", src, dst, state, "-x")
        assert rc == 0, out
        assert out["counters"]["skipped_mounts"] == 1
        assert not (dst / "sub").exists()
        proc = fsclone("pass", "copy", "--one-file-system", src, dst, state=state)
        assert b"skip sub (another filesystem: --one-file-system)" in proc.stdout
        assert run("copy", src, dst, state)[0] == 0  # without it, the mount is copied
        shutil.rmtree(src / "sub/data/d1")  # the target's subtree is left alone under -x
        before = snapshot(dst / "sub")
        for op in ("sync", "delete", "verify", "mtime"):
            rc, out = run(op, src, dst, state, "-x")
            assert (rc, out["counters"].get("skipped_mounts")) == (0, 1), out
            assert snapshot(dst / "sub") == before
        assert run("verify", src, dst, state)[0] == 1


def test_one_file_system_lists_every_skipped_mount_and_keeps_their_target_entries(
        tmp_path: Path) -> None:
    """Mounts deep in SRC, one inside another, a ``.snapshot`` directory (a loop-mounted
    ext4, as a filer's snapshot mount looks from a client): each skipped one is counted and
    listed in the summary and in the pass record; a type swap at a skipped mount point (a
    file in the target, the mount point a directory) is left alone by a sync, like an excluded
    entry."""
    src, dst, state = roots(tmp_path)
    (src / "a/deep").mkdir(parents=True)
    (src / SENTINEL).write_text("s")
    (src / "a/deep/file").write_text("f")
    dst.mkdir()
    (dst / "swap").write_text("the target's own, under a skipped mount point")
    with contextlib.ExitStack() as mounted:
        for point in ("a/deep/mnt", "outer", "outer/inner", "swap"):
            mounted.enter_context(tmpfs(src / point, "1m"))
            (src / point / "data").write_text(point)
        mounted.enter_context(loop_fs(src / ".snapshot", "ext4", 16))
        (src / ".snapshot/hourly.0").mkdir()
        rc, out = run("sync", src, dst, state, "-x")
        assert rc == 0, out
        skipped = [".snapshot", "a/deep/mnt", "outer", "swap"]
        assert out["counters"]["skipped_mounts"] == 4
        assert sorted(out["skipped"]) == skipped
        with contextlib.closing(sqlite3.connect(state / out["pass"] / "pass.db")) as db:
            assert sorted(os.fsdecode(p) for (p,) in db.execute("SELECT path FROM skipped")) \
                == skipped
        assert (dst / "swap").read_text() == "the target's own, under a skipped mount point"
        assert (dst / "a/deep/file").read_text() == "f"
        assert sorted(os.listdir(dst)) == [".snapshot.img", SENTINEL, "a", "swap"]
        assert os.listdir(dst / "a/deep") == ["file"]
