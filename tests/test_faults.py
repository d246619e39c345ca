"""Faults injected under real passes (issue 9's "fault injection that proves it").

Each case puts SRC or DST on faultfs, makes one kind of request fail, and runs the real CLI.
The pass must list the failure with its path and errno and exit non-zero; at no moment may
the target hold a file under its final name with the source's size and mtime and other bytes
(the next pass would take it for current); and once the fault is lifted, one more plain pass
must leave a target that the comparator and rsync both call faithful.
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from faultfs import FaultFS
from tests.clirun import fsclone
from tests.faultmount import faulty
from tests.fstree import assert_rsync_clean, assert_same_tree, leftovers, preserving_atimes

MIB = 1 << 20
#: 4 MiB files go in four 1 MiB ranges
SETTINGS = {"large_file_size": MIB, "range_size": MIB}
BIG = 4 * MIB
#: a byte inside the big file's third range (range 2, counting from 0)
IN_RANGE_2 = 2 * MIB + 12345


def run(*args: str | Path, state: Path) -> subprocess.CompletedProcess[bytes]:
    return fsclone("pass", *args, state=state, **SETTINGS)


def output(proc: subprocess.CompletedProcess[bytes]) -> str:
    return proc.stdout.decode(errors="replace") + proc.stderr.decode(errors="replace")


def make_tree(root: Path, *, big: bool = False) -> dict[str, bytes]:
    """A few files that must go over whatever happens to ``victim/``, and the victims."""
    files = {"ok/a": b"a" * 100, "ok/b": os.urandom(5000), "victim/small": os.urandom(3000)}
    if big:
        files["victim/big"] = os.urandom(BIG)
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    os.setxattr(root / "victim/small", "user.tag", b"kept")
    return files


def _regular_files(root: Path) -> Iterator[str]:
    """Relative paths of the regular files under root, fsclone's temp names left out."""
    for top, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".fsclone-")]
        for name in names:
            path = Path(top, name)
            if not name.startswith(".fsclone-") and stat.S_ISREG(path.lstat().st_mode):
                yield str(path.relative_to(root))


def _same_bytes(a: Path, b: Path) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(MIB), fb.read(MIB)
            if x != y:
                return False
            if not x:
                return True


def wrong_under_final_names(src: Path, dst: Path) -> list[str]:
    """Target files that look current (a regular file of the source's size and mtime under
    the same name) and hold other bytes: no later pass without --checksum would mend them.
    Reads the backing trees, never moving an atime."""
    wrong = []
    with preserving_atimes(src, dst):
        for rel in _regular_files(dst):
            try:
                s = (src / rel).lstat()
            except FileNotFoundError:
                continue
            d = (dst / rel).lstat()
            if (stat.S_ISREG(s.st_mode) and (s.st_size, s.st_mtime_ns) == (d.st_size,
                                                                           d.st_mtime_ns)
                    and not _same_bytes(src / rel, dst / rel)):
                wrong.append(rel)
    return wrong


def assert_nothing_wrong_under_final_names(src: Path, dst: Path) -> None:
    wrong = wrong_under_final_names(src, dst)
    assert not wrong, f"published with the source's size and mtime and wrong bytes: {wrong}"


def assert_faithful_after_one_more_pass(fs: FaultFS, src: Path, dst: Path, state: Path,
                                        op: str = "copy") -> None:
    """Lift the fault; one plain pass must then leave dst exactly src, by both judges."""
    fs.clear()
    proc = run(op, fs_root(fs, src), fs_root(fs, dst), state=state)
    assert proc.returncode == 0, output(proc)
    assert_same_tree(src, dst)
    assert_rsync_clean(src, dst)
    assert_nothing_wrong_under_final_names(src, dst)
    assert leftovers(dst) == []


def fs_root(fs: FaultFS, path: Path) -> Path:
    """The path a pass is given: the mountpoint for the faulty side, else the path itself."""
    return fs.mountpoint if path == fs.backing else path


def listed(proc: subprocess.CompletedProcess[bytes], rel: str, code: int) -> bool:
    """Whether the pass printed an error line for rel with this errno."""
    return any(rel in line and f"[errno {code}]" in line for line in output(proc).splitlines())


def test_eio_in_one_range_of_a_large_file_on_the_target(tmp_path: Path) -> None:
    src, state = tmp_path / "src", tmp_path / "state"
    src.mkdir()
    make_tree(src, big=True)
    with faulty(tmp_path, "dst") as (mnt, fs):
        fs.fail("WRITE", "EIO", path="victim/*", offset=IN_RANGE_2)
        proc = run("copy", src, mnt, state=state)
        assert proc.returncode == 1, output(proc)
        assert listed(proc, "victim/big", errno.EIO), output(proc)
        assert (fs.backing / "ok/b").read_bytes() == (src / "ok/b").read_bytes()
        assert_nothing_wrong_under_final_names(src, fs.backing)
        assert_faithful_after_one_more_pass(fs, src, fs.backing, state)


def test_eio_reading_one_range_of_a_large_source_file(tmp_path: Path) -> None:
    dst, state = tmp_path / "dst", tmp_path / "state"
    with faulty(tmp_path, "src") as (mnt, fs):
        make_tree(fs.backing, big=True)
        fs.fail("READ", "EIO", path="victim/big", offset=IN_RANGE_2)
        proc = run("copy", mnt, dst, state=state)
        assert proc.returncode == 1, output(proc)
        assert listed(proc, "victim/big", errno.EIO), output(proc)
        assert_nothing_wrong_under_final_names(fs.backing, dst)
        assert_faithful_after_one_more_pass(fs, fs.backing, dst, state)


@pytest.mark.parametrize("side", ["source-read", "target-write"])
def test_eio_in_a_small_files_data(tmp_path: Path, side: str) -> None:
    with faulty(tmp_path, "m") as (mnt, fs):
        if side == "source-read":
            src, dst, args = fs.backing, tmp_path / "dst", (mnt, tmp_path / "dst")
            make_tree(src)
            fs.fail("READ", "EIO", path="victim/small")
        else:
            src, dst, args = tmp_path / "src", fs.backing, (tmp_path / "src", mnt)
            src.mkdir()
            make_tree(src)
            fs.fail("WRITE", "EIO", path="victim/*")  # the file is written under a temp name
        proc = run("copy", *args, state=tmp_path / "state")
        assert proc.returncode == 1, output(proc)
        assert listed(proc, "victim/small", errno.EIO), output(proc)
        assert (dst / "ok/b").read_bytes() == (src / "ok/b").read_bytes()
        assert_nothing_wrong_under_final_names(src, dst)
        assert_faithful_after_one_more_pass(fs, src, dst, tmp_path / "state")


@pytest.mark.parametrize("op", ["RENAME", "LINK"])
def test_eio_on_the_targets_link_or_rename_step(tmp_path: Path, op: str) -> None:
    """RENAME: a changed file's temp is renamed over the old one. LINK: a new name of a
    hard-linked file is linked from the pass's staging directory."""
    src, state = tmp_path / "src", tmp_path / "state"
    src.mkdir()
    make_tree(src)
    with faulty(tmp_path, "dst") as (mnt, fs):
        assert run("copy", src, mnt, state=state).returncode == 0
        if op == "RENAME":
            (src / "victim/small").write_bytes(os.urandom(3001))  # a temp renamed over it
        else:
            os.link(src / "victim/small", src / "victim/second-name")
        fs.fail(op, "EIO", path="victim/*")
        proc = run("copy", src, mnt, state=state)
        assert proc.returncode == 1, output(proc)
        assert listed(proc, "victim/", errno.EIO), output(proc)
        assert_nothing_wrong_under_final_names(src, fs.backing)
        assert_faithful_after_one_more_pass(fs, src, fs.backing, state)


def test_eio_on_setxattr_on_the_target(tmp_path: Path) -> None:
    src, state = tmp_path / "src", tmp_path / "state"
    src.mkdir()
    make_tree(src)
    with faulty(tmp_path, "dst") as (mnt, fs):
        fs.fail("SETXATTR", "EIO", path="victim/*")
        proc = run("copy", src, mnt, state=state)
        assert proc.returncode == 1, output(proc)
        assert listed(proc, "victim/small", errno.EIO), output(proc)
        assert_nothing_wrong_under_final_names(src, fs.backing)
        assert_faithful_after_one_more_pass(fs, src, fs.backing, state)


@pytest.mark.parametrize("op", ["OPENDIR", "READDIR"])
def test_eio_listing_a_source_directory_deletes_nothing_under_it(tmp_path: Path,
                                                                 op: str) -> None:
    dst, state = tmp_path / "dst", tmp_path / "state"
    with faulty(tmp_path, "src") as (mnt, fs):
        make_tree(fs.backing)
        (fs.backing / "victim/sub").mkdir()
        (fs.backing / "victim/sub/deep").write_bytes(b"deep")
        assert run("copy", mnt, dst, state=state).returncode == 0
        target_only = ["victim/extra", "victim/sub/extra", "ok/extra"]
        for rel in target_only:
            (dst / rel).write_bytes(b"only in the target")
        fs.fail(op, "EIO", path="victim")
        proc = run("sync", mnt, dst, state=state)
        assert proc.returncode != 0, output(proc)
        assert listed(proc, "victim", errno.EIO), output(proc)
        assert (dst / "victim/extra").exists() and (dst / "victim/sub/extra").exists()
        assert (dst / "victim/sub/deep").exists()
        assert_faithful_after_one_more_pass(fs, fs.backing, dst, state, op="sync")


def test_enospc_part_way_through_a_large_file(tmp_path: Path) -> None:
    """The target fills up inside the big file's third range: nothing partial under a final
    name, one line that names the error, and a pass with room converges."""
    src, state = tmp_path / "src", tmp_path / "state"
    src.mkdir()
    make_tree(src, big=True)
    with faulty(tmp_path, "dst") as (mnt, fs):
        fs.fail("WRITE", "ENOSPC", path="victim/*", start=IN_RANGE_2)
        proc = run("copy", src, mnt, state=state)
        assert proc.returncode == 1, output(proc)
        lines = [line for line in output(proc).splitlines()
                 if f"[errno {errno.ENOSPC}]" in line or "No space left" in line]
        assert len(lines) == 1 and "victim/big" in lines[0], output(proc)
        assert_nothing_wrong_under_final_names(src, fs.backing)
        assert_faithful_after_one_more_pass(fs, src, fs.backing, state)


@pytest.mark.parametrize("err", ["ESTALE", "EACCES"])
def test_a_source_file_that_cannot_be_opened_is_listed_not_fatal(tmp_path: Path,
                                                                  err: str) -> None:
    dst, state = tmp_path / "dst", tmp_path / "state"
    with faulty(tmp_path, "src") as (mnt, fs):
        files = make_tree(fs.backing)
        fs.fail("OPEN", err, path="victim/small")
        proc = run("copy", mnt, dst, state=state)
        assert proc.returncode == 1, output(proc)
        assert listed(proc, "victim/small", getattr(errno, err)), output(proc)
        for rel in ("ok/a", "ok/b"):
            assert (dst / rel).read_bytes() == files[rel]
        assert not (dst / "victim/small").exists()
        assert_faithful_after_one_more_pass(fs, fs.backing, dst, state)
