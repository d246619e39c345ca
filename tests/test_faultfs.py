"""faultfs, the project's fault-injecting FUSE passthrough: faithful when no rule is set, and
each kind of rule fails exactly the requests it names."""

from __future__ import annotations

import errno
import os
import struct
import time
from pathlib import Path

import pytest

from faultfs import FaultFS, FaultFSError
from tests.clirun import fsclone
from tests.faultmount import faulty, require_faultfs
from tests.fstree import atime_map, build_hostile_tree, snapshot, tree_diffs

MIB = 1 << 20
#: vfs_cap_data revision 2 granting cap_net_raw, as `setcap cap_net_raw+p` writes it
CAPABILITY = struct.pack("<5I", 0x02000000, 1 << 13, 0, 0, 0)


def _read(path: Path | bytes) -> bytes:
    with open(path, "rb", buffering=0) as f:
        return f.read()


def _errno_of(call: object) -> int | None:
    """The errno ``call()`` fails with, None if it succeeds."""
    try:
        call()  # type: ignore[operator]
    except OSError as exc:
        return exc.errno
    return None


def test_the_mount_shows_the_backing_tree_exactly(tmp_path: Path) -> None:
    """Content, holes, xattrs, ACLs, modes, owners, ns times, specials, hard links, odd names
    read through the mount equal the backing tree's; reading moved no backing atime."""
    with faulty(tmp_path, "m") as (mnt, _):
        backing = tmp_path / "m.backing"
        build_hostile_tree(backing)
        os.setxattr(backing / "files/big", "security.capability", CAPABILITY)
        before = snapshot(backing)
        through = snapshot(mnt)
        assert tree_diffs(before, through) == []
        assert tree_diffs(before, snapshot(backing)) == []


def test_a_copy_written_through_the_mount_is_faithful(tmp_path: Path) -> None:
    """fsclone writing into the mount (create, mknod, link, rename, chown, chmod, xattrs, ACLs,
    utimens on every type) leaves in the backing tree an exact replica of the source."""
    src = tmp_path / "src"
    src.mkdir()
    build_hostile_tree(src)
    os.setxattr(src / "files/big", "security.capability", CAPABILITY)
    with faulty(tmp_path, "dst") as (mnt, _):
        proc = fsclone("pass", "copy", src, mnt, state=tmp_path / "state")
        assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
        assert tree_diffs(snapshot(src), snapshot(tmp_path / "dst.backing")) == []


def test_plain_reads_and_listings_through_the_mount_leave_backing_atimes(tmp_path: Path) -> None:
    """The reader asks for no O_NOATIME; faultfs adds it on the backing tree. (The hostile
    tree's atimes are older than its mtimes: relatime would move every one of them.)"""
    with faulty(tmp_path, "m") as (mnt, _):
        backing = tmp_path / "m.backing"
        build_hostile_tree(backing)
        before = atime_map(backing)
        read = 0
        pending = [mnt]
        while pending:  # by d_type alone: following a symlink would read it (and its atime)
            with os.scandir(pending.pop()) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        pending.append(Path(entry.path))
                    elif entry.is_file(follow_symlinks=False) and os.access(entry.path,
                                                                            os.R_OK):
                        _read(Path(entry.path))
                        read += 1
        assert read > 20
        assert atime_map(backing) == before


def test_a_rule_fails_only_its_path_and_clear_lifts_it(tmp_path: Path) -> None:
    with faulty(tmp_path, "m") as (mnt, fs):
        (mnt / "sub").mkdir()
        for name in ("a", "b", "sub/a"):
            (mnt / name).write_bytes(b"data")
        odd = os.fsencode(mnt) + b"/sp ace\n\xff"
        with open(odd, "wb") as f:
            f.write(b"data")
        fs.fail("OPEN", "EACCES", path="a")
        fs.fail("OPEN", "ESTALE", path="sub/*")
        fs.fail("OPEN", "EIO", path=b"sp ace\n\xff")
        assert _errno_of(lambda: _read(mnt / "a")) == errno.EACCES
        assert _errno_of(lambda: _read(mnt / "sub/a")) == errno.ESTALE
        assert _errno_of(lambda: _read(odd)) == errno.EIO
        assert _read(mnt / "b") == b"data"
        fs.clear()
        assert _read(mnt / "a") == _read(mnt / "sub/a") == b"data"


def test_name_rules_match_the_name_being_made_and_either_side_of_a_rename(
        tmp_path: Path) -> None:
    with faulty(tmp_path, "m") as (mnt, fs):
        (mnt / "d").mkdir()
        (mnt / "old").write_bytes(b"x")
        fs.fail("MKDIR", "ENOSPC", path="d/new")
        fs.fail("RENAME", "EIO", path="d/target")
        fs.fail("LOOKUP", str(errno.EROFS), path="d/looked-up")  # a number works as well
        assert _errno_of(lambda: (mnt / "d/new").mkdir()) == errno.ENOSPC
        (mnt / "d/other").mkdir()
        assert _errno_of(lambda: os.rename(mnt / "old", mnt / "d/target")) == errno.EIO
        assert _errno_of(lambda: os.lstat(mnt / "d/looked-up")) == errno.EROFS
        os.rename(mnt / "old", mnt / "d/fine")
        assert (tmp_path / "m.backing/d/fine").read_bytes() == b"x"


def test_offset_rules_fail_only_the_request_covering_that_byte(tmp_path: Path) -> None:
    with faulty(tmp_path, "m", direct_io=True) as (mnt, fs):
        data = os.urandom(4 * MIB)
        (mnt / "big").write_bytes(data)
        fs.fail("READ", "EIO", offset=2 * MIB + 5)
        fd = os.open(mnt / "big", os.O_RDONLY)
        try:
            assert os.pread(fd, MIB, 0) == data[:MIB]
            assert _errno_of(lambda: os.pread(fd, MIB, 2 * MIB)) == errno.EIO
            assert os.pread(fd, MIB, 3 * MIB) == data[3 * MIB:]
        finally:
            os.close(fd)
        fs.clear()
        fs.fail("WRITE", "ENOSPC", start=MIB)  # every write reaching the second MiB on
        fd = os.open(mnt / "grow", os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            assert os.pwrite(fd, b"x" * MIB, 0) == MIB
            assert _errno_of(lambda: os.pwrite(fd, b"y", 3 * MIB)) == errno.ENOSPC
        finally:
            os.close(fd)
        assert fs.counters()["injected.WRITE"] == 1


def test_nth_and_count_choose_which_calls_fail(tmp_path: Path) -> None:
    with faulty(tmp_path, "m", direct_io=True) as (mnt, fs):
        (mnt / "f").write_bytes(b"abc")
        fs.fail("GETXATTR", "EIO", path="f", nth=2, count=2)
        outcomes = [_errno_of(lambda: os.getxattr(mnt / "f", "user.none")) for _ in range(5)]
        assert outcomes == [errno.ENODATA, errno.EIO, errno.EIO, errno.ENODATA, errno.ENODATA]
        assert fs.counters()["injected.GETXATTR"] == 2


def test_counters_count_each_request_type_and_reset_zeroes_them(tmp_path: Path) -> None:
    with faulty(tmp_path, "m") as (mnt, fs):
        (mnt / "f").write_bytes(b"abc")
        fs.reset()
        for _ in range(3):
            os.setxattr(mnt / "f", "user.k", b"v")
        assert fs.counters()["SETXATTR"] == 3
        fs.reset()
        counts = fs.counters()
        assert counts["SETXATTR"] == 0 and counts["injected"] == 0


def test_entry_and_attr_timeouts_set_the_kernels_caches(tmp_path: Path) -> None:
    """The latency benchmark's "dentries cached, attributes not": no LOOKUP again, a GETATTR
    on every stat (and one on the mount root, whose permission the kernel checks)."""
    (tmp_path / "b").mkdir()
    (tmp_path / "b/f").write_bytes(b"abc")
    (tmp_path / "m").mkdir()
    require_faultfs()
    with FaultFS(tmp_path / "b", tmp_path / "m", entry_timeout=60, attr_timeout=0) as fs:
        os.stat(tmp_path / "m/f")
        fs.reset()
        for _ in range(3):
            os.stat(tmp_path / "m/f")
        counts = fs.counters()
        assert counts["LOOKUP"] == 0 and counts["GETATTR"] >= 3


def test_delay_slows_each_request_of_its_type(tmp_path: Path) -> None:
    with faulty(tmp_path, "m") as (mnt, fs):
        (mnt / "f").write_bytes(b"abc")
        fs.delay("meta", 20_000)
        started = time.monotonic()
        for _ in range(5):
            os.stat(mnt / "f")
        assert time.monotonic() - started >= 5 * 0.02
        fs.delay("*", 0)


def test_a_bad_command_is_refused_with_the_reason(tmp_path: Path) -> None:
    with faulty(tmp_path, "m") as (_, fs):
        with pytest.raises(FaultFSError, match="unknown request type"):
            fs.fail("NOSUCHOP", "EIO")
        with pytest.raises(FaultFSError, match="unknown errno"):
            fs.fail("READ", "ENOTANERRNO")


def test_a_missing_backing_directory_is_a_clear_error(tmp_path: Path) -> None:
    with faulty(tmp_path, "m"):  # skips where faultfs cannot run
        pass
    (tmp_path / "mnt").mkdir()
    with pytest.raises(FaultFSError, match="source is not a directory"), \
            FaultFS(tmp_path / "absent", tmp_path / "mnt"):
        pass
