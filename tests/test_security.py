"""fsclone as root among hostile users: nothing a user can do in SRC or DST, and no second pass
or stray state directory, makes a pass change anything outside its roots or let others read
its records. See docs/security.md."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fsclone.fs.lease import LEASE_XATTR
from tests.clirun import NOBODY, NOGROUP, as_user, fsclone, spawn, wait_ok
from tests.fstree import snapshot
from tests.midpass import held
from tests.mounts import bind, require_root
from tests.services import wait_for


@pytest.fixture
def world() -> Iterator[Path]:
    """A directory the unprivileged user ``nobody`` can reach (pytest's own temp directories
    are root's alone), holding a root-owned 0600 canary tree outside every pass root."""
    require_root()
    base = Path(tempfile.mkdtemp(prefix="fsclone-security-"))
    os.chmod(base, 0o755)
    canary = base / "canary"
    canary.mkdir(mode=0o700)
    (canary / "secret").write_bytes(b"root only\n")
    os.chmod(canary / "secret", 0o600)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def shared_tree(world: Path, count: int) -> tuple[Path, Path, Path, list[str]]:
    """SRC with a directory ``shared`` of ``count`` files that every user may write into,
    synced once; returns src, dst, the state directory and the file names."""
    src, dst, state = world / "src", world / "dst", world / "state"
    shared = src / "shared"
    shared.mkdir(parents=True)
    names = [f"f{i:03}" for i in range(count)]
    for n in names:
        (shared / n).write_bytes(n.encode())
    os.chmod(shared, 0o777)  # copied as such
    assert fsclone("pass", "sync", src, dst, state=state).returncode == 0
    return src, dst, state, names


def first_and_last(directory: Path, names: list[str]) -> tuple[str, str]:
    """Of ``names`` in ``directory``, the one its listing gives first and the one it gives
    last: a worker handles entries in listing order."""
    order = [n for n in os.listdir(directory) if n in names]
    return order[0], order[-1]


# -- defect: chmod through a symlink swapped in ------------------------------------------------
def test_mode_mended_in_place_never_follows_a_symlink_swapped_in(world: Path) -> None:
    """The target copy of a file whose mode alone changed is swapped for a symlink to a root
    file after the pass compared it (while the pass waits on another file of the directory):
    the mend must refuse, and the canary keep its mode (main made it 0666)."""
    src, dst, state, names = shared_tree(world, 8)
    shared = src / "shared"
    victim, stall = first_and_last(shared, names)
    os.chmod(shared / victim, 0o666)  # only the mode differs now: mended in place
    (shared / stall).write_bytes(b"new content, so the pass opens it")
    before = snapshot(world / "canary")
    with held(shared / stall) as lease:
        proc = spawn("pass", "sync", src, dst, state=state, workers=1)
        wait_for(lambda: lease.breaking() or None, 60, "the pass to reach the held file")

        def swap() -> None:
            os.unlink(dst / "shared" / victim)
            os.symlink(world / "canary" / "secret", dst / "shared" / victim)
        wait_ok(as_user(NOBODY, NOGROUP, swap))
    out, err = proc.communicate(timeout=120)
    assert snapshot(world / "canary") == before
    assert stat.S_IMODE(os.stat(world / "canary" / "secret").st_mode) == 0o600
    assert proc.returncode == 1, (out, err)  # the swapped entry is listed as an item error
    assert b"changed while being updated" in out + err, (out, err)


def test_a_user_racing_repeated_syncs_never_changes_the_canary(world: Path) -> None:
    """The same attack as a user would run it: ``nobody`` keeps swapping target copies of
    files whose mode keeps changing for symlinks to the canary, for a bounded time, while
    syncs mend them; the canary tree must come out as it went in."""
    src, dst, state, names = shared_tree(world, 200)
    shared = src / "shared"
    before = snapshot(world / "canary")
    stop = world / "stop"

    def race() -> None:
        deadline = time.monotonic() + 60
        while not stop.exists() and time.monotonic() < deadline:
            for n in random.sample(names, len(names)):  # copies a sync put back, at odd times
                with contextlib.suppress(OSError):
                    if (dst / "shared" / n).is_symlink():
                        continue
                    time.sleep(random.random() / 500)
                    os.unlink(dst / "shared" / n)
                    os.symlink(world / "canary" / "secret", dst / "shared" / n)
    racer = as_user(NOBODY, NOGROUP, race)
    try:
        for mode in [0o666, 0o644] * 5:
            for n in names:
                os.chmod(shared / n, mode)
            assert fsclone("pass", "sync", src, dst, state=state, workers=2).returncode in (0, 1)
    finally:
        stop.touch()
        wait_ok(racer)
    assert snapshot(world / "canary") == before


# -- defect: a state directory others can read or write ---------------------------------------
def test_state_directory_and_its_files_are_private(tmp_path: Path) -> None:
    """Pass records name roots, options and failed paths: 0700 directories, 0600 files."""
    src, dst, state = tmp_path / "src", tmp_path / "dst", tmp_path / "state"
    src.mkdir()
    (src / "f").write_bytes(b"x")
    assert fsclone("pass", "sync", src, dst, state=state).returncode == 0
    made = [state, *state.rglob("*")]
    assert any(p.name == "pass.db" for p in made) and any(p.suffix == ".lock" for p in made)
    assert any(p.suffix == ".json" for p in made)  # the tree's total
    wrong = {str(p.relative_to(tmp_path)): oct(stat.S_IMODE(p.lstat().st_mode)) for p in made
             if stat.S_IMODE(p.lstat().st_mode) != (0o700 if p.is_dir() else 0o600)}
    assert not wrong


@pytest.mark.parametrize("mode", [0o777, 0o775, 0o1777])
def test_a_state_directory_others_can_write_is_refused(tmp_path: Path, mode: int) -> None:
    src, dst, state = tmp_path / "src", tmp_path / "dst", tmp_path / "state"
    src.mkdir()
    (src / "f").write_bytes(b"x")
    state.mkdir()
    os.chmod(state, mode)
    proc = fsclone("pass", "sync", src, dst, state=state)
    assert proc.returncode == 2, proc
    assert proc.stderr.decode().strip().splitlines() == [
        f"fsclone: state directory {state} can be written by others: chmod go-w {state}"]
    assert not dst.exists() and os.listdir(state) == []


def test_a_state_directory_of_another_user_is_refused(tmp_path: Path) -> None:
    require_root()
    src, dst, state = tmp_path / "src", tmp_path / "dst", tmp_path / "state"
    src.mkdir()
    state.mkdir(mode=0o700)
    os.chown(state, NOBODY, NOGROUP)
    proc = fsclone("pass", "copy", src, dst, state=state)
    assert proc.returncode == 2, proc
    assert b"belongs to uid 65534" in proc.stderr and b"chown 0" in proc.stderr, proc
    assert not dst.exists() and os.listdir(state) == []


# -- defect: two passes on one target through two state directories ---------------------------
def test_a_second_pass_with_its_own_state_directory_is_refused(tmp_path: Path) -> None:
    """The lock lives with the target: a pass held mid-way keeps one that keeps its records
    elsewhere (main ran both). A dry run, which writes nothing, is refused too."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "d").mkdir(parents=True)
    for i in range(4):
        (src / "d" / f"f{i}").write_bytes(b"x" * i)
    with held(src / "d" / "f2") as lease:
        first = spawn("pass", "sync", src, dst, state=tmp_path / "one", workers=1)
        wait_for(lambda: lease.breaking() or None, 60, "the first pass to reach the held file")
        second = fsclone("pass", "copy", src, dst, state=tmp_path / "two")
        dry = fsclone("pass", "sync", src, dst, "--dry-run", state=tmp_path / "three")
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, (out, err)
    for proc in (second, dry):
        assert proc.returncode == 2, proc
        lines = proc.stderr.decode().strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(
            f"fsclone: another pass is running on target {dst} (pid {first.pid} on this host"), \
            lines
    assert [p.name for p in (tmp_path / "two").iterdir()] == ["locks"]  # no pass record


def _lease(**held: object) -> bytes:
    return json.dumps(held).encode()


def _lease_tree(tmp_path: Path) -> tuple[Path, Path]:
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_bytes(b"data")
    dst.mkdir()
    return src, dst


def test_a_pass_from_another_node_holding_the_targets_lease_is_respected(
        tmp_path: Path) -> None:
    """Where the target's locks are not shared between nodes (NFS, Lustre without flock),
    the lease recorded on its root keeps a second node's pass out while the first beats."""
    src, dst = _lease_tree(tmp_path)
    held = _lease(host="node-b", pid=4242, beat=time.time(), **{"pass": "x"})
    os.setxattr(dst, LEASE_XATTR, held)
    before = snapshot(dst)
    proc = fsclone("pass", "sync", src, dst, state=tmp_path / "state")
    assert proc.returncode == 2, proc
    lines = proc.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "is leased to" in lines[0] and "node-b" in lines[0], lines
    assert snapshot(dst) == before
    assert not any((tmp_path / "state").glob("*/pass.db"))


@pytest.mark.parametrize("lease", ["stale", "dead holder on this host",
                                   "this host's, its flock free", "garbled"])
def test_a_lease_no_live_pass_holds_is_taken_over_and_given_back(
        tmp_path: Path, lease: str) -> None:
    src, dst = _lease_tree(tmp_path)
    value = {"stale": _lease(host="node-b", pid=4242, beat=time.time() - 3600),
             "dead holder on this host": _lease(host=socket.gethostname(), pid=2**22 + 1,
                                                beat=time.time()),
             # a live pass of this host would hold the flock: one that does not is dead, even
             # when its pid now names another process (here: init)
             "this host's, its flock free": _lease(host=socket.gethostname(), pid=1,
                                                   beat=time.time()),
             "garbled": b"not json"}[lease]
    os.setxattr(dst, LEASE_XATTR, value)
    proc = fsclone("pass", "sync", src, dst, state=tmp_path / "state")
    assert proc.returncode == 0, proc
    assert LEASE_XATTR not in os.listxattr(dst)
    assert (dst / "d" / "f").read_bytes() == b"data"


def test_a_running_pass_holds_the_lease_and_beats(tmp_path: Path) -> None:
    src, dst = _lease_tree(tmp_path)
    with held(src / "d" / "f") as lease:
        first = spawn("pass", "copy", src, dst, state=tmp_path / "one", workers=1)
        wait_for(lambda: lease.breaking() or None, 60, "the pass to reach the held file")
        holder = json.loads(os.getxattr(dst, LEASE_XATTR))
        assert (holder["host"], holder["pid"]) == (socket.gethostname(), first.pid)
        assert time.time() - holder["beat"] < 60
    _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert LEASE_XATTR not in os.listxattr(dst)


# -- defect: roots aliased by bind mounts --------------------------------------------------------
def small_tree(root: Path) -> Path:
    (root / "d").mkdir(parents=True)
    (root / "d" / "f").write_bytes(b"data")
    os.link(root / "d" / "f", root / "d" / "g")
    return root


def test_source_and_target_the_same_through_a_bind_mount_is_refused(tmp_path: Path) -> None:
    """main synced SRC onto itself, moving its root's mtime and its hard links' ctimes."""
    src = small_tree(tmp_path / "src")
    before = snapshot(src)
    with bind(src, tmp_path / "alias") as alias:
        proc = fsclone("pass", "sync", src, alias, state=tmp_path / "state")
    assert proc.returncode == 2, proc
    assert proc.stderr.decode().strip() == (f"fsclone: source {src} and target {alias} are the "
                                            "same directory (through a bind mount)")
    assert snapshot(src) == before
    assert not (tmp_path / "state").exists() or not list((tmp_path / "state").glob("2*"))


def test_target_inside_the_source_through_a_bind_mount_is_refused(tmp_path: Path) -> None:
    """main walked into its own output, level after level."""
    src = small_tree(tmp_path / "src")
    before = snapshot(src)
    with bind(src, tmp_path / "alias") as alias:
        proc = fsclone("pass", "copy", src, alias / "copy", state=tmp_path / "state",
                       timeout=60)
        back = fsclone("pass", "copy", alias / "d", src, state=tmp_path / "state")
    assert proc.returncode == 2, proc
    assert proc.stderr.decode().strip() == (
        f"fsclone: target {alias / 'copy'} is inside source {src} (through a bind mount at "
        f"{alias})")
    assert back.returncode == 2, back
    assert back.stderr.decode().strip() == (
        f"fsclone: source {alias / 'd'} is inside target {src} (through a bind mount at "
        f"{alias})")
    assert snapshot(src) == before


def test_the_walk_never_enters_the_target_mounted_inside_the_source(tmp_path: Path) -> None:
    """The target bind-mounted below the source, off both roots' paths: the directory is
    listed as an item error, not walked (main copied the copy into itself)."""
    src, dst = small_tree(tmp_path / "src"), tmp_path / "dst"
    dst.mkdir()
    with bind(dst, src / "mnt"):
        proc = fsclone("pass", "copy", src, dst, state=tmp_path / "state", timeout=60)
        assert os.listdir(dst) == ["d"], os.listdir(dst)
    assert proc.returncode == 1, proc
    assert (f"mnt: copy: [errno {errno.ELOOP}] is the target's root (a bind mount into the "
            "source?): not entered").encode() in proc.stdout, proc
