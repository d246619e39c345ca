"""Delete, mtime and sync passes; filters; dry runs; delete guards; the target lock."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from tests.clirun import fsclone, fsclone_json
from tests.fstree import assert_rsync_clean, assert_same_tree, build_hostile_tree, snapshot

#: the fixture's (SRC, DST, state)
Copied = tuple[Path, Path, Path]


def tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.fixture
def copied(tmp_path: Path) -> tuple[Path, Path, Path]:
    src, dst, state = tmp_path / "src", tmp_path / "dst", tmp_path / "state"
    src.mkdir()
    build_hostile_tree(src)
    tree(src, {"extra/keep.txt": "k", "extra/sub/deep.txt": "d"})
    assert fsclone("pass", "copy", src, dst, state=state).returncode == 0
    return src, dst, state


def test_delete_removes_only_what_vanished_and_restores_parent_times(copied: Copied) -> None:
    src, dst, state = copied
    shutil.rmtree(src / "extra/sub")
    os.unlink(src / "files/small")
    rc, out = fsclone_json("pass", "delete", src, dst, state=state)
    assert rc == 0, out
    assert out["counters"]["deleted"] == 3  # sub, sub/deep.txt, files/small
    assert_same_tree(src, dst, atime=False)
    assert_rsync_clean(src, dst)


def test_sync_copies_and_deletes_in_one_walk(copied: Copied) -> None:
    src, dst, state = copied
    shutil.rmtree(src / "extra")
    tree(src, {"new/dir/file": "n"})
    (src / "files/small").write_text("changed")
    rc, out = fsclone_json("pass", "sync", src, dst, state=state)
    assert rc == 0, out
    assert out["counters"]["deleted"] == 4
    assert out["counters"]["files_copied"] == 2
    assert_same_tree(src, dst)
    assert_rsync_clean(src, dst)


def test_mtime_pass_restores_directory_times(copied: Copied) -> None:
    src, dst, state = copied
    (dst / "extra/sub/user-wrote-here").write_text("moves the mtime")
    os.unlink(dst / "extra/sub/user-wrote-here")
    os.utime(dst / "extra", ns=(1, 2))
    rc, out = fsclone_json("pass", "mtime", src, dst, state=state)
    assert rc == 0
    assert out["counters"]["updated"] == 2
    assert_same_tree(src, dst, atime=False)


def test_dry_runs_change_nothing_and_say_what_they_would_do(copied: Copied) -> None:
    src, dst, state = copied
    shutil.rmtree(src / "extra/sub")
    (src / "files/small").write_text("changed")
    os.chmod(src / "files/empty", 0o600)
    before_src, before_dst = snapshot(src), snapshot(dst)
    outputs = {}
    for op in ("copy", "delete", "mtime", "sync"):
        proc = fsclone("pass", op, "--dry-run", src, dst, state=state)
        assert proc.returncode == 0, proc.stderr
        outputs[op] = proc.stdout.decode()
    assert snapshot(src) == before_src
    assert snapshot(dst) == before_dst
    assert "copy files/small" in outputs["copy"]
    assert "attrs files/empty mode" in outputs["copy"]
    # a planned directory's entries are listed one by one, as their counting chunks meet them
    assert {"delete extra/sub", "delete extra/sub/deep.txt"} <= set(
        outputs["delete"].splitlines())
    assert "delete extra/sub" in outputs["sync"] and "copy files/small" in outputs["sync"]
    assert "(dry run)" in outputs["delete"]


def test_dry_run_into_missing_target_lists_everything_and_creates_nothing(tmp_path: Path) -> None:
    src = tree(tmp_path / "src", {"a/b/c.txt": "x", "d.txt": "y"})
    proc = fsclone("pass", "copy", "-n", src, tmp_path / "dst", state=tmp_path / "state")
    assert proc.returncode == 0, proc.stderr
    assert {"mkdir a", "mkdir a/b", "copy a/b/c.txt", "copy d.txt"} <= set(
        proc.stdout.decode().splitlines())
    assert not (tmp_path / "dst").exists()


def test_age_filters_skip_new_and_cold_files(tmp_path: Path) -> None:
    src, dst, state = tmp_path / "src", tmp_path / "dst", tmp_path / "state"
    tree(src, {"hot": "written now", "cold": "not read for long", "normal": "n"})
    day = 86400
    now = time.time()
    os.utime(src / "cold", (now - 200 * day, now - 300 * day))
    os.utime(src / "normal", (now - 2 * day, now - 5 * day))
    rc, out = fsclone_json("pass", "copy", "--newest", "1d", "--oldest", "90d", src, dst,
                           state=state)
    assert rc == 0
    assert sorted(os.listdir(dst)) == ["normal"]
    assert out["counters"]["skipped_newer"] == 1
    assert out["counters"]["skipped_older"] == 1


def test_config_file_settings_and_flags_win(tmp_path: Path) -> None:
    src, dst, state = tmp_path / "src", tmp_path / "dst", tmp_path / "state"
    tree(src, {"hot": "h"})
    config = tmp_path / "config.py"
    config.write_text(f"NEWEST_DATE = 86400\nsource_mount = {str(src)!r}\n"
                      f"target_mount = {str(dst)!r}\n")
    rc, out = fsclone_json("pass", "copy", "--config", config, state=state)
    assert rc == 0 and out["counters"]["skipped_newer"] == 1
    rc, out = fsclone_json("pass", "copy", "--config", config, "--newest", "0", state=state)
    assert rc == 0 and out["counters"]["files_copied"] == 1


def test_excluded_entries_are_neither_copied_nor_deleted(tmp_path: Path) -> None:
    src, dst, state = tmp_path / "src", tmp_path / "dst", tmp_path / "state"
    tree(src, {"a.o": "obj", "keep.c": "c", "build/x": "x", "build/important.o": "i"})
    rc, _ = fsclone_json("pass", "copy", "--exclude", "*.o", "--exclude", "build",
                         "--include", "important.o", src, dst, state=state)
    assert rc == 0
    assert sorted(os.listdir(dst)) == ["keep.c"]
    (dst / "target-only.o").write_text("the site's own file, excluded")
    rc, out = fsclone_json("pass", "delete", "--exclude", "*.o", src, dst, state=state)
    assert rc == 0
    assert (dst / "target-only.o").exists()
    assert out["counters"].get("deleted", 0) == 0


def test_delete_refuses_when_source_is_empty_or_sentinel_missing(copied: Copied,
                                                                 tmp_path: Path) -> None:
    _, dst, state = copied
    empty = tmp_path / "unmounted"
    empty.mkdir()
    before = snapshot(dst)
    proc = fsclone("pass", "delete", empty, dst, state=state)
    assert proc.returncode == 2
    assert b"is empty but target" in proc.stderr and len(proc.stderr.splitlines()) == 1
    proc = fsclone("pass", "sync", copied[0], dst, "--sentinel", ".mounted", state=state)
    assert proc.returncode == 2 and b"sentinel" in proc.stderr
    assert snapshot(dst) == before


def test_max_delete_refuses_before_deleting_anything(copied: Copied) -> None:
    src, dst, state = copied
    shutil.rmtree(src / "extra")
    before = snapshot(dst)
    proc = fsclone("pass", "delete", "--max-delete", "3", src, dst, state=state)
    assert proc.returncode == 2
    assert b"would delete 4 entries, more than --max-delete 3" in proc.stderr
    assert snapshot(dst) == before
    assert fsclone("pass", "delete", "--max-delete", "4", src, dst, state=state).returncode == 0
    assert not (dst / "extra").exists()


def test_nothing_deleted_below_a_source_directory_that_cannot_be_listed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Root can list anything, so the listing error is injected into the real pass (the forked
    workers inherit the patch)."""
    from fsclone.config import Config
    from fsclone.engine.coordinator import Hooks
    from fsclone.engine.launch import PassRequest, run_pass
    from fsclone.fs import dirs
    from fsclone.transport.local import LocalTransport

    src, dst, state = tmp_path / "src", tmp_path / "dst", tmp_path / "state"
    tree(src, {"open/a": "a", "locked/b": "b", "locked/inner/c": "c"})
    assert fsclone("pass", "copy", src, dst, state=state).returncode == 0
    os.unlink(src / "open/a")
    os.unlink(src / "locked/b")
    real = dirs.list_kinds

    def refuse_locked(fd: int) -> dict[str, bool]:
        if os.readlink(f"/proc/self/fd/{fd}").endswith("/src/locked"):
            raise PermissionError(13, "Permission denied")
        return real(fd)

    monkeypatch.setattr(dirs, "list_kinds", refuse_locked)
    _, summary = run_pass(Config(workers=2, state_dir=str(state)),
                             PassRequest(op="delete", src=str(src), dst=str(dst)), Hooks(),
                             LocalTransport(2))
    assert summary.error_count == 1
    assert [(e.path, e.errno) for e in summary.errors] == [("locked", 13)]
    assert not (dst / "open/a").exists()
    assert (dst / "locked/b").exists() and (dst / "locked/inner/c").exists()


def test_second_pass_on_the_same_target_is_refused(tmp_path: Path) -> None:
    from fsclone.state.lock import TargetLock

    src, dst, state = tmp_path / "src", tmp_path / "dst", tmp_path / "state"
    tree(src, {"a": "a"})
    lock = TargetLock(state, str(dst))
    lock.acquire("pass held-by-test")
    try:
        proc = fsclone("pass", "copy", src, dst, state=state)
    finally:
        lock.release()
    assert proc.returncode == 2
    assert b"another pass is running on this target (pass held-by-test" in proc.stderr
    assert not dst.exists()
    assert [p.name for p in state.iterdir()] == ["locks"]  # no pass record either
