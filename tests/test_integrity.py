"""Integrity under faults: nothing corrupt is ever published, and a later pass repairs."""

from __future__ import annotations

import os
import shutil
import stat
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from fsclone.chunk import Chunk
from fsclone.config import Config
from fsclone.engine.coordinator import Hooks
from fsclone.engine.launch import PassRequest, run_pass
from fsclone.transport.memory import MemoryBroker, MemoryTransport
from tests.clirun import NOBODY, NOGROUP, fsclone, fsclone_as, fsclone_json
from tests.fstree import (
    assert_nothing_wrong_under_final_names,
    assert_rsync_clean,
    assert_same_tree,
    leftovers,
    preserving_atimes,
)
from tests.mounts import loop_fs, require_root, resize_tmpfs, tmpfs

MIB = 1 << 20
#: a "large" file is one of 1 MiB or more, copied in 1 MiB ranges
RANGES = {"large_file_size": MIB, "range_size": MIB}


@pytest.mark.parametrize("remedy", ["plain pass", "retry errors"])
def test_a_large_file_whose_range_ran_out_of_room_is_never_published(
        tmp_path: Path, remedy: str) -> None:
    src, state = tmp_path / "src", tmp_path / "state"
    src.mkdir()
    (src / "big").write_bytes(os.urandom(4 * MIB))
    (src / "small").write_bytes(b"fits")
    with tmpfs(tmp_path / "dst", "2m") as dst:
        rc, out = fsclone_json("pass", "copy", "--workers", "2", src, dst, state=state,
                               **RANGES)
        assert rc == 1, out
        assert any(e["path"] == "big" and e["errno"] == 28 for e in out["errors"]), out
        assert not (dst / "big").exists(), "a file with a failed range was published"
        assert leftovers(dst) == []  # its temp is gone too
        resize_tmpfs(dst, "64m")
        again = ["--retry-errors", out["pass"]] if remedy == "retry errors" else [src, dst]
        rc, out = fsclone_json("pass", "copy", *again, state=state, **RANGES)
        assert rc == 0, out
        assert out["counters"].get("files_copied") == 1, out
        assert_nothing_wrong_under_final_names(src, dst)
        assert_same_tree(src, dst)
        assert_rsync_clean(src, dst)


def test_a_range_that_fails_all_its_attempts_is_never_published(tmp_path: Path) -> None:
    src, dst, state = tmp_path / "src", tmp_path / "dst", tmp_path / "state"
    src.mkdir()
    (src / "big").write_bytes(os.urandom(3 * MIB))

    def third_range(chunk: Chunk, earlier: int = 0) -> bool:
        return chunk.op == "range" and chunk.args["start"] == 2 * MIB

    broker = MemoryBroker()
    broker.fail(third_range, "worker died", times=None)
    cfg = Config(workers=1, state_dir=str(state), large_file_size=MIB, range_size=MIB)
    _, summary = run_pass(cfg, PassRequest(op="copy", src=str(src), dst=str(dst)), Hooks(),
                          MemoryTransport(broker))
    assert [r.chunk.attempt for r in broker.published if third_range(r.chunk)] == [0, 1, 2]
    assert [(e.path, e.op) for e in summary.errors] == [("big", "range")]
    assert not (dst / "big").exists(), "a file with a range given up on was published"
    assert leftovers(dst) == []


def _caps_net_raw() -> bytes:
    """security.capability for cap_net_raw+ep (vfs_cap_data revision 2, effective flag)."""
    return struct.pack("<5I", 0x02000001, 1 << 13, 0, 0, 0)


def test_capabilities_survive_an_owner_change(tmp_path: Path) -> None:
    """The admin chowns a binary and sets its caps again; the target's chown drops its caps
    (the kernel does that on every chown), so they must be set again after it."""
    require_root()
    src, dst, state = tmp_path / "src", tmp_path / "dst", tmp_path / "state"
    src.mkdir()
    ping = src / "ping"
    ping.write_bytes(b"\x7fELF pretend")
    os.setxattr(ping, "security.capability", _caps_net_raw())
    rc, out = fsclone_json("pass", "copy", src, dst, state=state)
    assert rc == 0, out
    os.chown(ping, 1234, 1234)
    os.setxattr(ping, "security.capability", _caps_net_raw())
    rc, out = fsclone_json("pass", "sync", src, dst, state=state)
    assert rc == 0, out
    assert out["counters"]["updated"] == 1
    assert os.getxattr(dst / "ping", "security.capability") == _caps_net_raw()
    assert_same_tree(src, dst)
    assert_rsync_clean(src, dst)


def test_a_symlink_retargeted_to_the_same_length_and_mtime_is_updated(tmp_path: Path) -> None:
    src, dst, state = tmp_path / "src", tmp_path / "dst", tmp_path / "state"
    src.mkdir()
    os.symlink("target-a", src / "link")
    assert fsclone_json("pass", "copy", src, dst, state=state)[0] == 0
    st = os.lstat(src / "link")
    os.unlink(src / "link")
    os.symlink("target-b", src / "link")
    os.utime(src / "link", ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
    rc, out = fsclone_json("pass", "sync", src, dst, state=state)
    assert rc == 0, out
    with preserving_atimes(dst):
        assert os.readlink(dst / "link") == "target-b"
    assert_same_tree(src, dst)
    assert_rsync_clean(src, dst)
    rc, out = fsclone_json("pass", "sync", src, dst, state=state)
    assert (rc, out["counters"].get("created", 0)) == (0, 0), out  # and now it is current
    assert_same_tree(src, dst)


@pytest.fixture
def nobody_tree() -> Iterator[Path]:
    """A directory the unprivileged user ``nobody`` owns, for src, dst and state (pytest's
    own temp directories are root's alone)."""
    require_root()
    base = Path(tempfile.mkdtemp(prefix="fsclone-nobody-"))
    os.chmod(base, 0o755)
    os.chown(base, NOBODY, NOGROUP)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)



def test_a_user_syncs_into_their_own_read_only_directories(nobody_tree: Path) -> None:
    """As rsync -a does: a directory without write permission is made writable for the
    change, and its mode restored after."""
    src, dst, state = nobody_tree / "src", nobody_tree / "dst", nobody_tree / "state"
    (src / "ro").mkdir(parents=True)
    (src / "ro/a").write_text("a")
    (src / "ro/gone").write_text("deleted next")
    for path in (src, src / "ro", src / "ro/a", src / "ro/gone"):
        os.chown(path, NOBODY, NOGROUP)
    os.chmod(src / "ro", 0o555)
    proc = fsclone_as(NOBODY, NOGROUP, "pass", "copy", src, dst, state=state)
    assert proc.returncode == 0, proc.stderr
    os.chmod(src / "ro", 0o755)
    (src / "ro/b").write_text("b")
    os.chown(src / "ro/b", NOBODY, NOGROUP)
    (src / "ro/a").write_text("a, changed")
    (src / "ro/gone").unlink()
    os.chmod(src / "ro", 0o555)
    proc = fsclone_as(NOBODY, NOGROUP, "pass", "sync", src, dst, state=state)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert stat.S_IMODE(os.stat(dst / "ro").st_mode) == 0o555
    assert not (dst / "ro/gone").exists()
    assert_same_tree(src, dst)
    assert_rsync_clean(src, dst)


def test_times_the_target_cannot_hold_are_reported_once_and_not_recopied(
        tmp_path: Path) -> None:
    """ext4 with 128-byte inodes stops in 2038 and keeps whole seconds: a source file of year
    2300 is kept at that limit, one with nanoseconds at the second, and the next pass must
    take neither for a change."""
    src, state = tmp_path / "src", tmp_path / "state"
    src.mkdir()
    (src / "future").write_text("from 2300")
    (src / "now").write_text("today")
    year_2300 = 10_413_792_000.0
    os.utime(src / "future", (year_2300, year_2300))
    os.utime(src / "now", ns=(1_700_000_000_123_456_789, 1_700_000_000_987_654_321))
    with loop_fs(tmp_path / "dst", "ext4", mkfs_args=["-I", "128"]) as dst:
        rc, out = fsclone_json("pass", "copy", src, dst, state=state)
        assert rc == 0, out
        assert out["counters"]["times_beyond_target"] == 1
        assert (dst / "future").read_text() == "from 2300"
        proc = fsclone("pass", "sync", src, dst, state=state)
        assert proc.returncode == 0, proc.stderr
        warnings = [line for line in proc.stderr.decode().splitlines() if "cannot hold" in line]
        assert len(warnings) == 1, proc.stderr
        rc, out = fsclone_json("pass", "sync", src, dst, state=state)
        assert rc == 0, out
        assert out["counters"].get("files_copied", 0) == 0, out
        assert out["counters"].get("updated", 0) == 0, out
        rc, out = fsclone_json("pass", "verify", src, dst, state=state)
        assert out["counters"].get("mismatches") == 1, out  # 2300 is not what the target holds
