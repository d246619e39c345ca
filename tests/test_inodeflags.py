"""Project IDs and chattr flags carried on every pass, on real loop-mounted XFS (project IDs
and flags work on a plain XFS mount; this kernel has no quota support, so no ``prjquota``).

The flags are checked three ways: by the test comparator (tests/fstree.py, extended with both),
by ``lsattr`` and ``xfs_io -c lsproj``, which share no code with fsclone, and by the counters
that tell a metadata update from a copy. (rsync is no judge here: it compares neither, and
its dry run cannot put back the atimes of immutable files it read.)
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from fsclone.config import Config
from fsclone.engine.coordinator import Hooks
from fsclone.engine.launch import PassRequest, run_pass
from fsclone.fs import inodeflags
from fsclone.transport.memory import MemoryBroker, MemoryTransport
from tests.clirun import fsclone, fsclone_json
from tests.fstree import assert_same_tree
from tests.mounts import loop_fs, tmpfs
from tests.services import require

_XFS_MB = 300  # mkfs.xfs makes nothing smaller


def chattr(spec: str, *paths: Path) -> None:
    subprocess.run([require("chattr"), spec, *paths], check=True, capture_output=True)


def chproj(projid: int, path: Path) -> None:
    subprocess.run([require("xfs_io"), "-c", f"chproj {projid}", path], check=True,
                   capture_output=True)


def lsattr(path: Path) -> str:
    """The flag letters ``lsattr -d`` shows, dashes dropped (it moves the atime)."""
    out = subprocess.run([require("lsattr"), "-d", path], check=True, capture_output=True)
    return out.stdout.split()[0].decode().replace("-", "")


def lsproj(path: Path) -> int:
    out = subprocess.run([require("xfs_io"), "-c", "lsproj", path], check=True,
                         capture_output=True).stdout.decode()
    found = re.search(r"projid = (\d+)", out)
    assert found, out
    return int(found.group(1))


@contextmanager
def roots(tmp_path: Path, src_kind: str) -> Iterator[tuple[Path, Path]]:
    """A source on ``src_kind`` (tmpfs or xfs) and a target on XFS, both made for the test."""
    with ExitStack() as stack:
        if src_kind == "tmpfs":
            src = stack.enter_context(tmpfs(tmp_path / "src", "16m"))
        else:
            src = stack.enter_context(loop_fs(tmp_path / "src", "xfs", size_mb=_XFS_MB))
        dst = stack.enter_context(loop_fs(tmp_path / "dst", "xfs", size_mb=_XFS_MB))
        yield src, dst


def build(src: Path, projects: bool) -> None:
    """Files and directories with the flags (and, on XFS, the project IDs) a copy must keep:
    immutable and append-only set last, since nothing can be added to them afterwards."""
    (src / "plain").write_text("plain")
    (src / "frozen").write_text("frozen")
    (src / "log").write_text("line 1\n")
    (src / "nodump").write_text("not for backups")
    (src / "twice").write_text("one inode, two names, immutable")
    (src / "twice-too").hardlink_to(src / "twice")
    (src / "locked").mkdir()
    (src / "locked/inside").write_text("in an immutable directory")
    if projects:
        chproj(7, src / "plain")
        (src / "proj").mkdir()
        chproj(42, src / "proj")
        chattr("+P", src / "proj")
        (src / "proj/inner").write_text("inherits project 42")
    chattr("+d", src / "nodump")
    chattr("+a", src / "log")
    chattr("+i", src / "frozen", src / "twice", src / "locked")


@contextmanager
def copied(tmp_path: Path, src_kind: str = "xfs") -> Iterator[tuple[Path, Path, Path]]:
    """The roots, the source built and copied once: (src, dst, state dir)."""
    state = tmp_path / "state"
    with roots(tmp_path, src_kind) as (src, dst):
        build(src, projects=src_kind == "xfs")
        rc, out = fsclone_json("pass", "copy", src, dst, state=state)
        assert rc == 0, out["errors"]
        yield src, dst, state


@pytest.mark.parametrize("src_kind", ["tmpfs", "xfs"])
def test_project_ids_and_flags_are_kept_on_copy_and_a_second_pass_changes_nothing(
        tmp_path: Path, src_kind: str) -> None:
    state = tmp_path / "state"
    with roots(tmp_path, src_kind) as (src, dst):
        build(src, projects=src_kind == "xfs")
        rc, out = fsclone_json("pass", "copy", src, dst, state=state)
        assert rc == 0, out["errors"]
        assert_same_tree(src, dst)  # project IDs and flags included
        rc, again = fsclone_json("pass", "sync", src, dst, state=state)
        assert rc == 0, again
        counters = again["counters"]
        assert (counters.get("files_copied", 0), counters.get("updated", 0)) == (0, 0), again
        # lsattr and xfs_io read without O_NOATIME: last, since they move atimes
        assert lsattr(dst / "frozen") == "i" and lsattr(dst / "locked") == "i"
        assert lsattr(dst / "log") == "a" and lsattr(dst / "nodump") == "d"
        assert lsattr(dst / "twice-too") == "i"
        assert (dst / "locked/inside").read_text() == "in an immutable directory"
        if src_kind == "xfs":
            assert (lsproj(dst / "plain"), lsproj(dst / "proj"), lsproj(dst / "proj/inner")) \
                == (7, 42, 42)
            assert lsattr(dst / "proj") == "P"


@pytest.mark.parametrize("src_kind", ["tmpfs", "xfs"])
def test_changed_flags_and_project_ids_are_metadata_updates(tmp_path: Path,
                                                            src_kind: str) -> None:
    with copied(tmp_path, src_kind) as (src, dst, state):
        chattr("-i", src / "frozen")
        chattr("+d", src / "frozen")  # immutable → nodump: the target must be unlocked first
        chattr("+i", src / "nodump")
        chattr("-a", src / "log")
        chattr("-i", src / "locked")
        chattr("+a", src / "locked")
        changed = 4
        if src_kind == "xfs":
            chproj(9, src / "plain")
            chattr("-P", src / "proj")
            changed += 2
        rc, out = fsclone_json("pass", "sync", src, dst, state=state)
        assert rc == 0, out
        assert out["counters"].get("files_copied", 0) == 0, out
        assert out["counters"]["updated"] == changed, out
        assert_same_tree(src, dst)
        assert (lsattr(dst / "frozen"), lsattr(dst / "nodump")) == ("d", "id")
        assert (lsattr(dst / "log"), lsattr(dst / "locked")) == ("", "a")
        if src_kind == "xfs":
            assert lsproj(dst / "plain") == 9


def test_an_immutable_target_whose_source_changed_is_rewritten_and_locked_again(
        tmp_path: Path) -> None:
    """The target's frozen file (and the one in its immutable directory, and the append-only
    log) refuse the rename that replaces them: their flags are cleared, the new content goes
    in, and the flags are set again."""
    with copied(tmp_path) as (src, dst, state):
        chattr("-i", src / "frozen", src / "locked")
        chattr("-a", src / "log")
        (src / "frozen").write_text("thawed, rewritten, frozen again")
        (src / "locked/inside").write_text("rewritten inside")
        with (src / "log").open("a") as log:
            log.write("line 2\n")
        chattr("+i", src / "frozen", src / "locked")
        chattr("+a", src / "log")
        rc, out = fsclone_json("pass", "sync", src, dst, state=state)
        assert rc == 0, out
        assert out["counters"]["files_copied"] == 3, out
        assert_same_tree(src, dst)
        assert (dst / "frozen").read_text() == "thawed, rewritten, frozen again"
        assert (dst / "locked/inside").read_text() == "rewritten inside"
        assert (dst / "log").read_text() == "line 1\nline 2\n"
        assert (lsattr(dst / "frozen"), lsattr(dst / "locked"), lsattr(dst / "log")) \
            == ("i", "i", "a")


def test_verify_reports_a_differing_project_id_and_flag(tmp_path: Path) -> None:
    with copied(tmp_path) as (src, dst, state):
        chproj(99, dst / "plain")
        chattr("-d", dst / "nodump")
        proc = fsclone("pass", "verify", src, dst, state=state)
        text = proc.stdout.decode()
        assert proc.returncode == 1, text
        assert "mismatch plain: project ID 7 != 99" in text, text
        assert "mismatch nodump: flags nodump != -" in text, text
        assert text.count("mismatch ") == 2, text


def test_the_mtime_pass_carries_directory_flags(tmp_path: Path) -> None:
    with copied(tmp_path) as (src, dst, state):
        chattr("+d", src / "proj")
        chproj(43, src / "proj")
        rc, out = fsclone_json("pass", "mtime", src, dst, state=state)
        assert rc == 0, out
        assert out["counters"]["updated"] >= 1, out
        assert_same_tree(src, dst)
        assert (lsattr(dst / "proj"), lsproj(dst / "proj")) == ("dP", 43)


def test_a_flag_changed_on_the_target_alone_is_seen_with_checksum(tmp_path: Path) -> None:
    """An unchanged file's flags are compared only where the source changed after the copy
    (see docs/design.md): a target that lost a flag by other hands (or was made by another
    tool) is mended by a --checksum pass, which opens every file anyway."""
    with copied(tmp_path) as (src, dst, state):
        chattr("-d", dst / "nodump")
        chproj(5, dst / "plain")
        rc, out = fsclone_json("pass", "sync", src, dst, state=state)
        assert (rc, out["counters"].get("updated", 0)) == (0, 0), out
        rc, out = fsclone_json("pass", "sync", "--checksum", src, dst, state=state)
        assert rc == 0, out
        assert out["counters"]["updated"] == 2 and out["counters"].get("files_copied", 0) == 0
        assert_same_tree(src, dst)


def test_a_target_without_project_ids_costs_one_refusal_per_pass(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ioctl numbers are those of the kernel's headers, and tmpfs (project IDs read as 0,
    any other refused) is probed once on a file of ours (the pass's profile), then never
    asked again."""
    assert (inodeflags.FS_IOC_FSGETXATTR, inodeflags.FS_IOC_FSSETXATTR) == (0x801C581F, 0x401C5820)
    assert (inodeflags.FS_IOC_GETFLAGS, inodeflags.FS_IOC_SETFLAGS) == (0x80086601, 0x40086602)
    calls: list[int] = []
    real = inodeflags.fcntl.ioctl

    def counted(fd: int, request: int, arg: bytes) -> bytes:
        calls.append(request)
        return real(fd, request, arg)

    monkeypatch.setattr(inodeflags.fcntl, "ioctl", counted)
    with tmpfs(tmp_path / "shm", "1m") as shm:
        fd = os.open(shm, os.O_WRONLY | os.O_TMPFILE, 0o600)
        try:
            takes = inodeflags.takes_projids(fd)
        finally:
            os.close(fd)
        side, source = inodeflags.Side(takes, True), inodeflags.Side(takes, True)
        for _ in range(20):
            fd = os.open(shm, os.O_WRONLY | os.O_TMPFILE, 0o600)
            try:
                want = source.read(fd, side.projids)
                side.set_projid(fd, want.projid)
            finally:
                os.close(fd)
    projid_calls = [r for r in calls if r in (inodeflags.FS_IOC_FSGETXATTR,
                                              inodeflags.FS_IOC_FSSETXATTR)]
    assert projid_calls == [inodeflags.FS_IOC_FSGETXATTR, inodeflags.FS_IOC_FSSETXATTR]
    assert not takes and side.flags


def test_a_large_immutable_file_in_ranges_is_locked_once_renamed(tmp_path: Path) -> None:
    """A file copied in byte ranges is published by its finalize chunk: flags after times,
    immutable after the rename (an immutable temp could not be renamed), over an immutable
    old copy."""
    state = tmp_path / "state"
    with roots(tmp_path, "xfs") as (src, dst):
        (src / "big").write_bytes(os.urandom(3 << 20))
        chproj(11, src / "big")
        chattr("+i", src / "big")
        sizes = {"large_file_size": 1 << 20, "range_size": 1 << 20}
        for _ in range(2):  # a new file, then new content over the immutable copy
            rc, out = fsclone_json("pass", "sync", src, dst, state=state, **sizes)
            assert rc == 0, out["errors"]
            assert out["counters"]["files_copied"] == 1, out
            assert_same_tree(src, dst)
            chattr("-i", src / "big")
            (src / "big").write_bytes(os.urandom(3 << 20))
            chattr("+i", src / "big")


def test_a_sync_deletes_immutable_and_append_only_entries(tmp_path: Path) -> None:
    """Files gone from the source are removed from the target even where they, or their
    directory, are immutable or append-only there (set on the target by hand too, so that
    the test does not lean on the copy having carried them), and so is a subtree the source
    never had, with immutable entries at every level (removed by prune chunks)."""
    with copied(tmp_path) as (src, dst, state):
        (dst / "extra/deeper").mkdir(parents=True)
        (dst / "extra/file").write_text("immutable, in the target only")
        (dst / "extra/deeper/file").write_text("append-only, in the target only")
        chattr("+a", dst / "extra/deeper/file")
        chattr("+i", dst / "extra/file", dst / "extra/deeper", dst / "extra")
        chattr("+i", dst / "frozen", dst / "twice", dst / "locked")
        chattr("+a", dst / "log")
        chattr("-i", src / "frozen", src / "twice", src / "locked")
        chattr("-a", src / "log")
        for gone in ("frozen", "log", "twice", "twice-too", "locked/inside"):
            (src / gone).unlink()
        chattr("+i", src / "locked")
        rc, out = fsclone_json("pass", "sync", src, dst, state=state)
        assert rc == 0, out["errors"]
        assert out["counters"]["deleted"] == 9, out  # 5, and extra with its 3 entries
        assert not (dst / "extra").exists()
        assert_same_tree(src, dst)
        assert lsattr(dst / "locked") == "i"


def test_the_comparator_sees_a_project_id_and_a_flag(tmp_path: Path) -> None:
    """tests/fstree.py compares project IDs and flags where both filesystems have them."""
    with copied(tmp_path) as (src, dst, _):
        assert_same_tree(src, dst)
        chattr("-d", dst / "nodump")
        chproj(3, dst / "plain")
        with pytest.raises(AssertionError) as seen:
            assert_same_tree(src, dst)
        assert "flags 0x40 != 0x0" in str(seen.value)
        assert "projid 7 != 3" in str(seen.value)


def test_a_mended_inode_has_its_flags_and_project_id_read_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A chmod-ed file, and a directory whose mtime moved, are mended in place with the
    target's project ID and flags read by their compare: on Lustre every GETFLAGS is a
    metadata server round trip. Each target inode is read once (one FSGETXATTR, one
    GETFLAGS), and written only where the source differs; a locked one is still unlocked."""
    reads: dict[str, int] = {}
    real = inodeflags.fcntl.ioctl

    def counted(fd: int, request: int, arg: bytes, *more: bool) -> bytes:
        if request in (inodeflags.FS_IOC_GETFLAGS, inodeflags.FS_IOC_FSGETXATTR):
            where = os.readlink(f"/proc/self/fd/{fd}")
            reads[where] = reads.get(where, 0) + 1
        return real(fd, request, arg, *more)

    def sync(src: Path, dst: Path) -> dict[str, int]:
        cfg = Config(workers=1, state_dir=str(tmp_path / "state"))
        _, summary = run_pass(cfg, PassRequest(op="sync", src=str(src), dst=str(dst)),
                              Hooks(), MemoryTransport(MemoryBroker(1)))
        assert summary.error_count == 0, summary.errors
        return summary.counters

    with copied(tmp_path) as (src, dst, _):
        (src / "many").mkdir()
        names = [f"f{n}" for n in range(12)]
        for name in names:
            (src / "many" / name).write_text(name)
        chattr("+d", src / "many" / "f0")
        chattr("+i", src / "locked")
        sync(src, dst)
        for name in names:
            os.chmod(src / "many" / name, 0o600)
        os.utime(src / "many", (1_000_000_000, 1_000_000_000))
        chattr("-i", src / "locked")
        (src / "locked" / "new").write_text("in a directory locked on the target")
        chattr("+i", src / "locked")
        monkeypatch.setattr(inodeflags.fcntl, "ioctl", counted)
        counters = sync(src, dst)
        monkeypatch.undo()
        assert counters.get("updated", 0) >= len(names), counters
        assert_same_tree(src, dst)
        assert lsattr(dst / "locked") == "i" and lsattr(dst / "many" / "f0") == "d"
    # the compare reads each target inode once; the mend reads nothing again
    assert {n: reads[str(dst / "many" / n)] for n in names} == {n: 2 for n in names}, reads
    assert reads[str(dst / "many")] == 2, reads
    # an immutable target directory is read again to unlock it: the lock is cleared there
    assert reads[str(dst / "locked")] >= 3, reads
