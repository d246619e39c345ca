"""The copy pass on one machine: faithful on every file type and name, incremental, atomic."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from fsclone.chunk import Chunk, Result
from fsclone.config import load
from fsclone.engine.coordinator import Hooks
from fsclone.engine.launch import PassRequest, run_pass
from fsclone.fs import data
from fsclone.ops import copy
from fsclone.ops.context import Context
from fsclone.spec import PassSpec
from fsclone.transport.local import LocalTransport
from tests.clirun import fsclone, fsclone_json
from tests.fstree import (
    assert_rsync_clean,
    assert_same_tree,
    atime_map,
    build_hostile_tree,
    leftovers,
    preserving_atimes,
    snapshot,
    tree_diffs,
)


@pytest.fixture(params=["shm", "disk"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """Both a tmpfs and a disk filesystem: holes, xattrs and ACLs behave differently."""
    if request.param == "disk":
        return tmp_path
    base = Path("/dev/shm")
    if not base.is_dir():
        pytest.skip("no /dev/shm")
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="fsclone-test-", dir=base))
    request.addfinalizer(lambda: os.system(f"rm -rf '{path}'"))
    return path


def hostile(where: Path) -> tuple[Path, Path, Path]:
    src, dst, state = where / "src", where / "dst", where / "state"
    src.mkdir()
    build_hostile_tree(src)
    return src, dst, state


def test_hostile_tree_is_copied_exactly_and_source_untouched(where: Path) -> None:
    src, dst, state = hostile(where)
    before = snapshot(src, atime=False)
    atimes = atime_map(src)
    rc, out = fsclone_json("pass", "copy", "--workers", "2", src, dst, state=state)
    assert rc == 0, out
    assert out["counters"]["files_copied"] > 20
    assert out["counters"].get("errors", 0) == 0
    # symlink atimes move on readlink (a kernel rule, no O_NOATIME for links): all else stays
    after = atime_map(src)
    moved = [p for p in atimes
             if atimes[p] != after[p] and not os.path.islink(src / os.fsdecode(p))]
    assert moved == []
    assert tree_diffs(before, snapshot(src, atime=False)) == []
    assert_same_tree(src, dst)
    assert_rsync_clean(src, dst)
    assert leftovers(dst) == []


def test_second_pass_does_nothing(where: Path) -> None:
    src, dst, state = hostile(where)
    assert fsclone("pass", "copy", src, dst, state=state).returncode == 0
    before = snapshot(dst)
    rc, out = fsclone_json("pass", "copy", src, dst, state=state)
    assert rc == 0
    c = out["counters"]
    assert c.get("files_copied", 0) == 0 and c.get("updated", 0) == 0 and c.get("created", 0) == 0
    assert c["unchanged"] > 30
    assert tree_diffs(before, snapshot(dst)) == []


def test_incremental_pass_takes_edits_and_metadata_changes(tmp_path: Path) -> None:
    src, dst, state = hostile(tmp_path)
    assert fsclone("pass", "copy", src, dst, state=state).returncode == 0
    with preserving_atimes(src):
        (src / "files/small").write_bytes(b"new content, other size")
        os.chmod(src / "files/empty", 0o604)
        os.chown(src / "files/empty", 4321, 8765)
        os.chown(src / "perms/setgid", 4000, 4001)  # a chown clears set-id bits: put them back
        os.chmod(src / "perms/setgid", 0o2755)
        os.setxattr(src / "nest", "user.added", b"later")
    mtime = os.stat(src / "files/big").st_mtime_ns
    os.utime(src / "files/big", ns=(1_111_111_111_123_456_789, mtime))  # atime only
    rc, out = fsclone_json("pass", "copy", src, dst, state=state)
    assert rc == 0
    assert out["counters"]["files_copied"] == 1  # only the edited file's data is rewritten
    assert out["counters"]["updated"] == 4  # mode+owner, owner (set-id kept), xattr, an atime
    assert_same_tree(src, dst)
    assert_rsync_clean(src, dst)


def test_new_files_get_owner_and_mode_however_the_target_directory_makes_them(
        tmp_path: Path) -> None:
    """New files are made with their final permission bits and chown/chmod only where that
    did not come out right: under a narrow umask, in a setgid target directory (whose new
    files take its group), for set-id bits and for owners other than the worker's."""
    src, dst, state = tmp_path / "src", tmp_path / "dst", tmp_path / "state"
    (src / "grp").mkdir(parents=True)
    os.chown(src / "grp", 0, 5678)
    os.chmod(src / "grp", 0o2775)
    assert fsclone("pass", "copy", src, dst, state=state).returncode == 0
    cases = {"root-644": (0, 0, 0o644), "dir-group": (0, 5678, 0o640),
             "user-664": (1000, 1000, 0o664), "setuid": (0, 0, 0o4755),
             "private": (0, 0, 0o600), "read-only": (2000, 0, 0o444)}
    for name, (uid, gid, mode) in cases.items():
        for parent in (src, src / "grp"):
            path = parent / name
            path.write_text(name)
            os.chown(path, uid, gid)
            os.chmod(path, mode)
    umask = os.umask(0o077)  # the pass's processes inherit it
    try:
        rc, out = fsclone_json("pass", "copy", src, dst, state=state)
    finally:
        os.umask(umask)
    assert rc == 0 and out["counters"]["files_copied"] == 2 * len(cases)
    for name, (uid, gid, mode) in cases.items():
        for parent in (dst, dst / "grp"):
            st = os.stat(parent / name)
            assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (uid, gid, mode), \
                parent / name
    assert_same_tree(src, dst)
    assert_rsync_clean(src, dst)


def test_type_swaps_on_either_side(tmp_path: Path) -> None:
    src, dst, state = tmp_path / "src", tmp_path / "dst", tmp_path / "state"
    (src / "x").mkdir(parents=True)
    (src / "x/f2d").write_text("file")
    (src / "x/d2f").mkdir()
    (src / "x/d2f/inner").write_text("deep")
    (src / "x/f2l").write_text("file")
    os.symlink("nowhere", src / "x/l2d")
    assert fsclone("pass", "copy", src, dst, state=state).returncode == 0
    (src / "x/f2d").unlink()
    (src / "x/f2d").mkdir()
    (src / "x/f2d/child").write_text("c")
    (src / "x/d2f/inner").unlink()
    (src / "x/d2f").rmdir()
    (src / "x/d2f").write_text("now a file")
    (src / "x/f2l").unlink()
    os.symlink("f2d", src / "x/f2l")
    (src / "x/l2d").unlink()
    (src / "x/l2d").mkdir()
    # a copy deletes nothing: a directory <-> non-directory swap is listed and left
    proc = fsclone("pass", "copy", "-v", src, dst, state=state)
    assert proc.returncode == 0, proc.stderr
    assert b"type changed x/d2f (left for sync or delete)" in proc.stdout
    assert (dst / "x/d2f/inner").read_text() == "deep"
    assert (dst / "x/f2d").is_file() and (dst / "x/l2d").is_symlink()
    assert (dst / "x/f2l").is_symlink()  # file -> symlink replaces one entry: carried out
    rc, out = fsclone_json("pass", "copy", src, dst, state=state)
    assert rc == 0 and out["counters"]["type_changed"] == 3, out
    rc, out = fsclone_json("pass", "sync", src, dst, state=state)
    assert rc == 0, out
    assert out["counters"]["deleted"] == 4  # d2f and inner, f2d, l2d
    assert out["counters"]["type_changed"] == 3
    assert_same_tree(src, dst)
    assert_rsync_clean(src, dst)


def test_renames_and_deletions_with_copy_then_delete(tmp_path: Path) -> None:
    src, dst, state = hostile(tmp_path)
    assert fsclone("pass", "copy", src, dst, state=state).returncode == 0
    os.rename(src / "files", src / "renamed-files")
    os.unlink(src / "links/a")
    assert fsclone("pass", "copy", src, dst, state=state).returncode == 0
    rc, out = fsclone_json("pass", "delete", src, dst, state=state)
    assert rc == 0, out
    assert out["counters"]["deleted"] >= 2
    assert_same_tree(src, dst, atime=False)
    assert_rsync_clean(src, dst)


def test_hard_links_split_in_the_source_are_split_in_the_target(tmp_path: Path) -> None:
    src, dst, state = tmp_path / "src", tmp_path / "dst", tmp_path / "state"
    src.mkdir()
    (src / "a").write_text("shared")
    os.link(src / "a", src / "b")
    assert fsclone("pass", "copy", src, dst, state=state).returncode == 0
    assert os.stat(dst / "a").st_ino == os.stat(dst / "b").st_ino
    st = os.stat(src / "b")
    os.unlink(src / "b")
    (src / "b").write_text("shared")
    os.utime(src / "b", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert fsclone("pass", "copy", src, dst, state=state).returncode == 0
    assert os.stat(dst / "a").st_ino != os.stat(dst / "b").st_ino
    assert_same_tree(src, dst)


def test_huge_directory_and_large_files_are_split(tmp_path: Path) -> None:
    src, dst, state = tmp_path / "src", tmp_path / "dst", tmp_path / "state"
    big = src / "big"
    big.mkdir(parents=True)
    for i in range(230):
        (big / f"f{i:04}").write_bytes(os.urandom(i))
    (big / "sub").mkdir()
    with open(src / "sparse.bin", "wb") as f:  # 3 MiB with data only in its middle
        f.truncate(3 << 20)
        f.seek(1 << 20)
        f.write(os.urandom(300_000))
    (src / "dense.bin").write_bytes(os.urandom((2 << 20) + 12345))
    os.chmod(src / "big", 0o555)
    rc, out = fsclone_json("pass", "copy", "--workers", "2", src, dst, state=state,
                           dir_slice=50, large_file_size=1 << 20, range_size=256 << 10)
    assert rc == 0, out
    assert out["counters"]["chunks_done"] > 20  # 5 slices + 12 + 21 ranges + barriers
    assert_same_tree(src, dst)
    assert os.stat(dst / "sparse.bin").st_blocks * 512 < (1 << 20)
    assert leftovers(dst) == []


def test_checksum_finds_same_size_same_mtime_change(tmp_path: Path) -> None:
    src, dst, state = tmp_path / "src", tmp_path / "dst", tmp_path / "state"
    src.mkdir()
    (src / "f").write_bytes(b"A" * 100)
    assert fsclone("pass", "copy", src, dst, state=state).returncode == 0
    st = os.stat(dst / "f")
    (dst / "f").write_bytes(b"B" * 100)
    os.utime(dst / "f", ns=(st.st_atime_ns, st.st_mtime_ns))
    _, plain = fsclone_json("pass", "copy", src, dst, state=state)
    assert plain["counters"].get("files_copied", 0) == 0
    _, summed = fsclone_json("pass", "copy", "--checksum", src, dst, state=state)
    assert summed["counters"]["files_copied"] == 1
    assert (dst / "f").read_bytes() == b"A" * 100


def test_modify_window_tolerates_coarse_times(tmp_path: Path) -> None:
    src, dst, state = tmp_path / "src", tmp_path / "dst", tmp_path / "state"
    src.mkdir()
    (src / "f").write_text("x")
    assert fsclone("pass", "copy", src, dst, state=state).returncode == 0
    st = os.stat(src / "f")
    os.utime(dst / "f", ns=(st.st_atime_ns, st.st_mtime_ns - st.st_mtime_ns % 10**9))
    _, out = fsclone_json("pass", "copy", "--modify-window", "1", src, dst, state=state)
    assert out["counters"].get("files_copied", 0) == 0
    _, out = fsclone_json("pass", "copy", src, dst, state=state)
    assert out["counters"]["files_copied"] == 1  # without the window, the mtime differs


def _copy_in_process(src: Path, dst: Path) -> Result:
    """One copy chunk of ``src``'s root into ``dst``, run in this process."""
    ctx = Context(PassSpec(id="t", op="copy", src=str(src), dst=str(dst), started=0.0))
    try:
        return copy.run_copy(ctx, Chunk(op="copy", path=""))
    finally:
        ctx.close()


def test_file_changed_during_copy_is_not_stamped_done(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    (src / "busy").write_bytes(b"1" * 4096)
    real = data.copy_whole

    def copy_while_user_writes(s: int, d: int, size: int, sparse: bool,
                                devices: data.Devices = None, kernel: bool = True) -> int:
        n = real(s, d, size, sparse, devices, kernel)
        with open(src / "busy", "ab") as f:
            f.write(b"appended by a user")
        return n

    monkeypatch.setattr(data, "copy_whole", copy_while_user_writes)
    result = _copy_in_process(src, dst)
    assert result.counters.get("changed_during_copy") == 1
    assert result.counters.get("files_copied", 0) == 0
    assert os.listdir(dst) == []  # neither the file nor its temp


def test_name_that_appears_in_the_target_during_a_copy_is_replaced(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A new file is linked in under its name only when complete; if a user created that name
    meanwhile, the copy still wins (like rsync), through a temp name and rename."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    (src / "f").write_bytes(b"from the source")
    real = data.copy_whole

    def copy_while_user_creates(s: int, d: int, size: int, sparse: bool,
                                devices: data.Devices = None, kernel: bool = True) -> int:
        (dst / "f").write_bytes(b"made by a user meanwhile")
        return real(s, d, size, sparse, devices, kernel)

    monkeypatch.setattr(data, "copy_whole", copy_while_user_creates)
    result = _copy_in_process(src, dst)
    assert not result.errors and result.counters.get("files_copied") == 1
    assert (dst / "f").read_bytes() == b"from the source"
    assert leftovers(dst) == []


def test_targets_without_unnamed_files_get_temp_names_and_rename(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Filesystems without O_TMPFILE (NFS, some parallel filesystems) take the named path:
    the pass runs in this process, so its forked workers inherit the missing flag."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    build_hostile_tree(src)
    monkeypatch.delattr(os, "O_TMPFILE")
    cfg = load(None, {"FSCLONE_STATE_DIR": str(tmp_path / "state")}, {"workers": 2})
    _, summary = run_pass(cfg, PassRequest(op="copy", src=str(src), dst=str(dst)), Hooks(),
                          LocalTransport(cfg.workers))
    assert summary.error_count == 0 and summary.counters["files_copied"] > 0
    assert_same_tree(src, dst)
    assert leftovers(dst) == []


def test_read_only_directory_is_filled_then_closed(tmp_path: Path) -> None:
    src, dst, state = tmp_path / "src", tmp_path / "dst", tmp_path / "state"
    (src / "ro/deeper").mkdir(parents=True)
    (src / "ro/file").write_text("x")
    os.chmod(src / "ro", 0o500)
    assert fsclone("pass", "copy", src, dst, state=state).returncode == 0
    assert stat.S_IMODE(os.stat(dst / "ro").st_mode) == 0o500
    assert_same_tree(src, dst)
