"""Faults injected under real passes (issue 9's "fault injection that proves it").

Each case puts SRC or DST on faultfs, makes one kind of request fail, and runs the real CLI.
The pass must list the failure with its path and errno and exit non-zero; at no moment may
the target hold a file under its final name with the source's size and mtime and other bytes
(the next pass would take it for current); and once the fault is lifted, one more plain pass
must leave a target that the comparator and rsync both call faithful.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from faultfs import FaultFS
from tests.clirun import fsclone, fsclone_json
from tests.faultmount import faulty
from tests.fstree import (
    assert_nothing_wrong_under_final_names,
    assert_rsync_clean,
    assert_same_tree,
    leftovers,
)

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


def make_tree(root: Path, *, big: bool = False) -> None:
    """A few files that must go over whatever happens to ``victim/``, and the victims."""
    files = {"ok/a": b"a" * 100, "ok/b": os.urandom(5000), "victim/small": os.urandom(3000)}
    if big:
        files["victim/big"] = os.urandom(BIG)
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    os.setxattr(root / "victim/small", "user.tag", b"kept")


class Scene:
    """A pass's two sides, one of them on faultfs: ``src`` and ``dst`` are the real trees
    (the backing directory on the faulty side), ``roots`` what the pass is given."""

    def __init__(self, tmp_path: Path, fs: FaultFS, faulty_side: str) -> None:
        self.fs, self.state = fs, tmp_path / "state"
        other = tmp_path / ("dst" if faulty_side == "src" else "src")
        other.mkdir(exist_ok=True)
        if faulty_side == "src":
            self.src, self.dst, self.roots = fs.backing, other, (fs.mountpoint, other)
        else:
            self.src, self.dst, self.roots = other, fs.backing, (other, fs.mountpoint)

    def run(self, op: str = "copy") -> subprocess.CompletedProcess[bytes]:
        return run(op, *self.roots, state=self.state)

    def faulted(self, op: str, err: str, path: str, pass_op: str = "copy", *,
                offset: int | None = None,
                start: int | None = None) -> subprocess.CompletedProcess[bytes]:
        """Run a pass while requests of type op fail with err (rule as in FaultFS.fail)."""
        self.fs.fail(op, err, path=path, offset=offset, start=start)
        return self.run(pass_op)

    def assert_failed(self, proc: subprocess.CompletedProcess[bytes], rel: str,
                      code: int) -> None:
        """The pass exited 1 (items failed), listed rel with this errno, and published no file
        that looks current with wrong bytes."""
        assert proc.returncode == 1, output(proc)
        assert any(rel in line and f"[errno {code}]" in line
                   for line in output(proc).splitlines()), output(proc)
        assert_nothing_wrong_under_final_names(self.src, self.dst)

    def assert_converges(self, op: str = "copy") -> None:
        """Lift the fault; one plain pass must then leave dst exactly src, by both judges."""
        self.fs.clear()
        proc = self.run(op)
        assert proc.returncode == 0, output(proc)
        assert_same_tree(self.src, self.dst)
        assert_rsync_clean(self.src, self.dst)
        assert_nothing_wrong_under_final_names(self.src, self.dst)
        assert leftovers(self.dst) == []


@contextlib.contextmanager
def scene(tmp_path: Path, faulty_side: str, *, big: bool = False) -> Iterator[Scene]:
    """faultfs under SRC or DST, the source filled by make_tree."""
    with faulty(tmp_path, faulty_side) as (_, fs):
        sc = Scene(tmp_path, fs, faulty_side)
        make_tree(sc.src, big=big)
        yield sc


@pytest.mark.parametrize(("side", "op"), [("dst", "WRITE"), ("src", "READ")])
def test_eio_in_one_range_of_a_large_file(tmp_path: Path, side: str, op: str) -> None:
    with scene(tmp_path, side, big=True) as sc:
        proc = sc.faulted(op, "EIO", path="victim/*", offset=IN_RANGE_2)
        assert (sc.dst / "ok/b").read_bytes() == (sc.src / "ok/b").read_bytes()
        sc.assert_failed(proc, "victim/big", errno.EIO)
        sc.assert_converges()


@pytest.mark.parametrize(("side", "op"), [("src", "READ"), ("dst", "WRITE"),
                                          ("dst", "SETXATTR")])
def test_eio_in_a_small_files_data_or_xattrs(tmp_path: Path, side: str, op: str) -> None:
    """On the target, the file is written (and its xattrs set) under a temp name in victim/."""
    with scene(tmp_path, side) as sc:
        proc = sc.faulted(op, "EIO", path="victim/*")
        assert (sc.dst / "ok/b").read_bytes() == (sc.src / "ok/b").read_bytes()
        sc.assert_failed(proc, "victim/small", errno.EIO)
        sc.assert_converges()


def test_an_item_error_names_its_step_and_side_in_errors_and_json(tmp_path: Path) -> None:
    """An xattr the target refuses is listed, by the pass summary and by ``fsclone errors``
    (lines and --json) from the pass record, as the target's xattr step."""
    with scene(tmp_path, "dst") as sc:
        sc.fs.fail("SETXATTR", "EIO", path="victim/*")
        rc, out = fsclone_json("pass", "copy", *sc.roots, state=sc.state, **SETTINGS)
        assert rc == 1, out
        want = {"path": "victim/small", "op": "copy", "errno": errno.EIO,
                "message": os.strerror(errno.EIO), "step": "xattr", "side": "target"}
        assert out["errors"] == [want]
        listed = fsclone("errors", out["pass"], "--json", state=sc.state)
        assert json.loads(listed.stdout) == [want]
        text = fsclone("errors", out["pass"], state=sc.state).stdout.decode()
        assert text == (f"target xattr\tvictim/small\tcopy\tEIO ({errno.EIO})\t"
                        f"{os.strerror(errno.EIO)}\n")
        sc.assert_converges()


@pytest.mark.parametrize("op", ["RENAME", "LINK"])
def test_eio_on_the_targets_link_or_rename_step(tmp_path: Path, op: str) -> None:
    """RENAME: a changed file's temp is renamed over the old one. LINK: a new name of a
    hard-linked file is linked from the pass's staging directory."""
    with scene(tmp_path, "dst") as sc:
        assert sc.run().returncode == 0
        if op == "RENAME":
            (sc.src / "victim/small").write_bytes(os.urandom(3001))
        else:
            os.link(sc.src / "victim/small", sc.src / "victim/second-name")
        proc = sc.faulted(op, "EIO", path="victim/*")
        sc.assert_failed(proc, "victim/", errno.EIO)
        sc.assert_converges()


@pytest.mark.parametrize("op", ["OPENDIR", "READDIR"])
def test_eio_listing_a_source_directory_deletes_nothing_under_it(tmp_path: Path,
                                                                 op: str) -> None:
    with scene(tmp_path, "src") as sc:
        (sc.src / "victim/sub").mkdir()
        (sc.src / "victim/sub/deep").write_bytes(b"deep")
        assert sc.run().returncode == 0
        for rel in ("victim/extra", "victim/sub/extra", "ok/extra"):
            (sc.dst / rel).write_bytes(b"only in the target")
        proc = sc.faulted(op, "EIO", path="victim", pass_op="sync")
        sc.assert_failed(proc, "victim", errno.EIO)
        for rel in ("victim/extra", "victim/sub/extra", "victim/sub/deep"):
            assert (sc.dst / rel).exists(), f"{rel} deleted under an unlisted directory"
        sc.assert_converges("sync")


def test_a_source_entry_that_cannot_be_stat_ed_is_its_own_item_error(tmp_path: Path) -> None:
    """Where nothing is to be deleted, an lstat failing after the listing costs that entry
    alone: the rest of its directory is synced, and its copy is kept."""
    with scene(tmp_path, "src") as sc:
        (sc.src / "victim/other").write_bytes(b"other")
        assert sc.run("sync").returncode == 0
        (sc.src / "victim/other").write_bytes(b"changed")
        proc = sc.faulted("GETATTR", "EIO", path="victim/small", pass_op="sync")
        sc.assert_failed(proc, "victim/small", errno.EIO)
        assert (sc.dst / "victim/other").read_bytes() == b"changed"
        assert (sc.dst / "victim/small").read_bytes() == (sc.src / "victim/small").read_bytes()
        sc.assert_converges("sync")


@pytest.mark.parametrize("case", ["new name", "over a name", "in a slice", "target only"])
def test_an_entry_that_cannot_be_stat_ed_where_files_are_to_go_deletes_nothing(
        tmp_path: Path, case: str) -> None:
    """A directory with something to delete has its listing read whole first, as a listing a
    deletion is planned from must be: an entry whose lstat fails fails the directory, and
    nothing in it is deleted. That entry may be the new name of a renamed file (to a new
    name, over another file's, or one the listing hands out to a slice) whose copy under the
    old name is the only one the target has, maybe the only readable one (an OST down on a
    Lustre source)."""
    with scene(tmp_path, "src") as sc:
        (sc.src / "victim/two").write_bytes(b"two")
        assert sc.run("sync").returncode == 0
        settings: dict[str, int] = {}
        failing, kept = "renamed", ["small"]
        if case == "new name":
            os.rename(sc.src / "victim/small", sc.src / "victim/renamed")
        elif case == "over a name":
            os.rename(sc.src / "victim/small", sc.src / "victim/two")
            failing = "two"
        elif case == "in a slice":
            os.rename(sc.src / "victim/small", sc.src / "victim/n1")
            os.rename(sc.src / "victim/two", sc.src / "victim/n2")
            # a slice of one: the listing chunk keeps the first new name, hands out the other
            failing = [n for n in os.listdir(sc.src / "victim") if n in ("n1", "n2")][1]
            kept, settings = ["small", "two"], {"dir_slice": 1}
        else:
            (sc.dst / "victim/extra").write_bytes(b"only in the target")
            failing, kept = "small", ["extra", "small"]
        sc.fs.fail("GETATTR", "EIO", path=f"victim/{failing}")
        proc = fsclone("pass", "sync", *sc.roots, state=sc.state, **SETTINGS, **settings)
        sc.assert_failed(proc, "victim", errno.EIO)
        for name in kept:
            assert (sc.dst / "victim" / name).exists(), f"{name}: deleted"
        sc.assert_converges("sync")
        assert not (sc.dst / "victim/extra").exists()


def test_enospc_part_way_through_a_large_file(tmp_path: Path) -> None:
    """The target fills up inside the big file's third range: nothing partial under a final
    name, one line that names the error, and a pass with room converges."""
    with scene(tmp_path, "dst", big=True) as sc:
        proc = sc.faulted("WRITE", "ENOSPC", path="victim/*", start=IN_RANGE_2)
        sc.assert_failed(proc, "victim/big", errno.ENOSPC)
        lines = [line for line in output(proc).splitlines()
                 if f"[errno {errno.ENOSPC}]" in line or "No space left" in line]
        assert len(lines) == 1, output(proc)
        sc.assert_converges()


@pytest.mark.parametrize("err", ["ESTALE", "EACCES"])
def test_a_source_file_that_cannot_be_opened_is_listed_not_fatal(tmp_path: Path,
                                                                  err: str) -> None:
    with scene(tmp_path, "src") as sc:
        proc = sc.faulted("OPEN", err, path="victim/small")
        sc.assert_failed(proc, "victim/small", getattr(errno, err))
        for rel in ("ok/a", "ok/b"):
            assert (sc.dst / rel).read_bytes() == (sc.src / rel).read_bytes()
        assert not (sc.dst / "victim/small").exists()
        sc.assert_converges()


def test_a_failed_entry_of_a_split_directory_still_gets_the_directory_its_times(
        tmp_path: Path) -> None:
    """A barrier whose member listed an error releases its chunk all the same: only a large
    file's finalize discards what its members built; a split directory's dirmeta still runs."""
    with faulty(tmp_path, "dst") as (dst, fs):
        src, state = tmp_path / "src", tmp_path / "state"
        (src / "many").mkdir(parents=True)
        for i in range(9):
            (src / "many" / f"f{i}").write_bytes(b"x" * (i + 1))
        fs.fail("WRITE", "EIO", path="many/*", nth=7, count=1)  # in a slice
        proc = fsclone("pass", "copy", src, dst, state=state, dir_slice=3)
        assert proc.returncode == 1, output(proc)
        assert "chunk failed" not in output(proc), output(proc)
        assert os.stat(dst / "many").st_mtime_ns == os.stat(src / "many").st_mtime_ns


@pytest.mark.parametrize(("side", "op", "step"), [
    ("src", "OPEN", ("open", "source")), ("src", "READ", ("read", "source")),
    ("dst", "WRITE", ("data", "target")),
    ("dst", "RENAME", ("publish", "target"))])
def test_an_item_error_names_the_step_and_the_side_that_failed(
        tmp_path: Path, side: str, op: str, step: tuple[str, str]) -> None:
    """A changed file is rewritten under a temp name and renamed over the old copy: whichever
    step of that fails, on whichever side, its item error says so."""
    with scene(tmp_path, side) as sc:
        assert sc.run().returncode == 0
        (sc.src / "victim/small").write_bytes(os.urandom(3001))
        sc.fs.fail(op, "EIO", path="victim/*")
        rc, out = fsclone_json("pass", "copy", *sc.roots, state=sc.state, **SETTINGS)
        assert rc == 1, out
        assert [(e["path"], e["errno"], e["step"], e["side"]) for e in out["errors"]] == [
            ("victim/small", errno.EIO, *step)]
        assert leftovers(sc.dst) == []
