"""Lustre layouts and HSM-released files through whole passes, without a Lustre: the workers
take the source and the target for Lustre (statfs patched), read layouts from a table instead
of getxattr (tmpfs has no ``lustre.`` namespace), and make the create path's setxattr calls
on a double that records them and keeps what they set in the same table. Everything else is
the real pass on real files."""

from __future__ import annotations

import errno
import functools
import json
import os
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fsclone.cli.display.console import Console
from fsclone.config import Config
from fsclone.engine.coordinator import Hooks
from fsclone.engine.launch import PassRequest, run_pass
from fsclone.fs import dirs, fstype
from fsclone.fs.lustre import create, read
from fsclone.fs.lustre import layout as lov
from fsclone.fs.lustre.create import O_LOV_DELAY_CREATE, LustreCreate
from fsclone.fs.lustre.layout import LAYOUT_XATTR
from fsclone.lifecycle import Summary
from fsclone.state.record import PassStore
from fsclone.state.released import NAME as RELEASED_LIST
from fsclone.transport.memory import MemoryBroker, MemoryTransport
from tests.clirun import fsclone
from tests.fstree import assert_same_tree
from tests.test_lustre import COMP, RAID0, RELEASED, MiB, comp, v1, v3

EOF = 2**64 - 1
ROOT_DEFAULT = v3(RAID0, MiB, 1, 0xFFFF, b"flash", oi=(0, 0))
WIDE = v1(RAID0, 4 * MiB, 8, 0xFFFF, oi=(0, 0))
STRIPED = v1(RAID0, MiB, 4, 3, struct.pack("=QQII", 0x41, 0x100000000, 0, 3) * 4)
POOLED = v3(RAID0, 4 * MiB, 2, 5, b"flash")
ARCHIVED = v3(RAID0, 4 * MiB, 2, 5, b"archive")
#: plain PFL (no DoM): what an older server refuses with EINVAL
PFL = comp([(1, 0, 0, 64 * MiB, v1(RAID0, MiB, 1, 0xFFFF)),
            (2, 0, 64 * MiB, EOF, v1(RAID0, 4 * MiB, 4, 0xFFFF))])
GONE_TO_TAPE = v1(RAID0 | RELEASED, MiB, 2, 0)


def reused(blob: bytes, pool_map: dict[str, str] | None = None,
           target_pools: set[str] | None = None) -> bytes:
    """What the target is asked for, given the source's layout."""
    return lov.encode(lov.sanitize(lov.decode(blob), pool_map, target_pools))


Key = tuple[int, int]


def key_of(st: os.stat_result) -> Key:
    return st.st_dev, st.st_ino


class FakeLustre:
    """Both sides (or those ``lustre`` says) taken for Lustre; layouts by inode in
    :attr:`layouts`; the create path's calls recorded in :attr:`calls`, each setxattr with the
    size its file had then; ``refuse(value)`` answers a setxattr with an errno."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch,
                 refuse: Callable[[bytes], int | None] = lambda value: None,
                 lustre: Callable[[str], bool] = lambda path: True) -> None:
        self.layouts: dict[Key, bytes] = {}
        self.calls: list[tuple[Any, ...]] = []
        self.refuse = refuse
        self._lock = threading.Lock()
        monkeypatch.setattr(fstype, "fs_kind", lambda fd: "lustre" if lustre(
            os.readlink(f"/proc/self/fd/{fd}")) else "tmpfs")
        monkeypatch.setattr(read, "getxattr", self.getxattr)
        monkeypatch.setattr(create, "LustreCreate", functools.partial(LustreCreate, osapi=self))

    def set(self, path: Path, blob: bytes) -> None:
        self.layouts[key_of(os.lstat(path))] = blob

    def of(self, path: Path) -> bytes | None:
        return self.layouts.get(key_of(os.lstat(path)))

    def sets(self) -> list[tuple[Key, bytes]]:
        """The layouts set through the create path: (inode, value)."""
        return [(c[1], c[2]) for c in self.calls if c[0] == "setxattr"]

    # -- the read seam ---------------------------------------------------------------------
    def getxattr(self, target: int | str) -> bytes:
        st = os.fstat(target) if isinstance(target, int) else os.lstat(target)
        try:
            return self.layouts[key_of(st)]
        except KeyError:
            raise OSError(errno.ENODATA, "no layout") from None

    # -- the create path's OS calls (fsclone.fs.lustre.create.LayoutOS) --------------------
    def open(self, path: str, flags: int, mode: int = 0o777, *,
             dir_fd: int | None = None) -> int:
        fd = os.open(path, flags, mode, dir_fd=dir_fd)
        with self._lock:
            self.calls.append(("open", key_of(os.fstat(fd)), flags & O_LOV_DELAY_CREATE))
        return fd

    def setxattr(self, path: int, attribute: str, value: bytes, flags: int = 0) -> None:
        assert attribute == LAYOUT_XATTR
        st = os.fstat(path)
        with self._lock:
            self.calls.append(("setxattr", key_of(st), value, st.st_size))
        err = self.refuse(value)
        if err:
            raise OSError(err, os.strerror(err))
        if value:
            self.layouts[key_of(st)] = value
        else:
            self.layouts.pop(key_of(st), None)

    def close(self, fd: int) -> None:
        os.close(fd)

    def unlink(self, path: str, *, dir_fd: int | None = None) -> None:
        os.unlink(path, dir_fd=dir_fd)


def copy(tmp_path: Path, op: str = "copy", workers: int = 1, **options: Any) -> Summary:
    cfg = Config(workers=workers, state_dir=str(tmp_path / "state"), large_file_size=1 << 20,
                 range_size=1 << 19, **options)
    _, summary = run_pass(cfg, PassRequest(op=op, src=str(tmp_path / "src"),
                                           dst=str(tmp_path / "dst")),
                          Hooks(), MemoryTransport(MemoryBroker(workers)))
    return summary


def layout_counters(summary: Summary) -> dict[str, int]:
    return {k: v for k, v in summary.counters.items() if k.startswith("layout_default_")}


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[Path]:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    for name in ("striped", "pooled", "pfl", "d/none", "d/linked"):
        (src / name).write_bytes(name.encode() * 100)
    os.link(src / "d/linked", src / "linked-too")
    (src / "big").write_bytes(os.urandom(3 << 20))  # copied in ranges
    yield src


def give_layouts(lustre: FakeLustre, src: Path) -> dict[str, bytes]:
    given = {"striped": STRIPED, "pooled": POOLED, "pfl": PFL, "d/linked": STRIPED,
             "big": WIDE}
    for name, blob in given.items():
        lustre.set(src / name, blob)
    return given


# -- --layout keep and target-default ---------------------------------------------------------

def test_keep_creates_every_new_file_with_its_source_layout_before_its_data(
        tmp_path: Path, tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lustre = FakeLustre(monkeypatch)
    given = give_layouts(lustre, tree)
    summary = copy(tmp_path)
    assert summary.error_count == 0, summary.errors
    dst = tmp_path / "dst"
    assert_same_tree(tree, dst)
    for name, blob in given.items():
        assert lustre.of(dst / name) == reused(blob), name
    assert lustre.of(dst / "d/none") is None  # no layout read: the target's default
    sets = lustre.sets()
    assert len(sets) == len(given)  # once a file (the hard link's second name is a link)
    # each through the delayed open of its own inode, while the file was still empty
    delayed = {c[1] for c in lustre.calls if c[0] == "open" and c[2]}
    assert {key for key, _ in sets} == delayed
    assert all(c[3] == 0 for c in lustre.calls if c[0] == "setxattr")
    assert not layout_counters(summary)
    # a second pass finds everything current: no layout read or set again
    lustre.calls.clear()
    again = copy(tmp_path, "sync")
    assert again.error_count == 0 and again.counters.get("files_copied", 0) == 0
    assert lustre.calls == []


def test_target_default_never_sets_a_layout(tmp_path: Path, tree: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    lustre = FakeLustre(monkeypatch)
    give_layouts(lustre, tree)
    lustre.set(tree / "d", WIDE)  # a directory default of its own, too
    summary = copy(tmp_path, layout="target-default")
    assert summary.error_count == 0, summary.errors
    assert_same_tree(tree, tmp_path / "dst")
    assert lustre.calls == []
    assert lustre.of(tmp_path / "dst/d") is None


def test_keep_only_between_two_lustres(tmp_path: Path, tree: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    src = str(tree)
    lustre = FakeLustre(monkeypatch, lustre=lambda path: path.startswith(src))
    give_layouts(lustre, tree)
    summary = copy(tmp_path)
    assert summary.error_count == 0, summary.errors
    assert lustre.calls == []


# -- directory default layouts ----------------------------------------------------------------

def test_directory_defaults_are_copied_only_where_a_directory_has_its_own(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The filesystem root's default shows on every directory without one of its own (here
    tmp_path stands for that root, above both pass roots): only "wide", whose own differs
    from its parent's, gets one on the target; "wide/inner" shows the default it inherited
    from "wide", and "plain" the root's. A later sync sets what changed, and only that."""
    src = tmp_path / "src"
    for sub in ("wide/inner", "plain"):
        (src / sub).mkdir(parents=True)
        (src / sub / "f").write_text(sub)
    lustre = FakeLustre(monkeypatch)
    for d in (tmp_path, src, src / "plain"):
        lustre.set(d, ROOT_DEFAULT)
    lustre.set(src / "wide", WIDE)
    lustre.set(src / "wide/inner", WIDE)
    (tmp_path / "dst").mkdir()
    lustre.set(tmp_path / "dst", ROOT_DEFAULT)  # shows the root's, as the source root does
    summary = copy(tmp_path)
    assert summary.error_count == 0, summary.errors
    dst = tmp_path / "dst"
    dir_sets = [(key, value) for key, value in lustre.sets()
                if key in {key_of(os.lstat(p)) for p in (dst, dst / "wide", dst / "wide/inner",
                                                          dst / "plain")}]
    assert dir_sets == [(key_of(os.lstat(dst / "wide")), WIDE)]

    lustre.calls.clear()
    again = copy(tmp_path, "sync")
    assert again.error_count == 0 and lustre.calls == []

    lustre.set(src / "plain", WIDE)  # one of its own now
    lustre.set(src / "wide", ROOT_DEFAULT)  # its own taken away: it shows the root's
    lustre.set(src / "wide/inner", ROOT_DEFAULT)
    third = copy(tmp_path, "sync")
    assert third.error_count == 0, third.errors
    assert sorted(lustre.sets()) == sorted([(key_of(os.lstat(dst / "plain")), WIDE),
                                            (key_of(os.lstat(dst / "wide")), b"")])


# -- refusals ---------------------------------------------------------------------------------

def refuse_composites(value: bytes) -> int | None:
    return errno.EINVAL if value[:4] == struct.pack("=I", COMP) else None


def test_a_refused_kind_falls_back_and_is_counted_once_per_kind_over_all_workers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    lustre = FakeLustre(monkeypatch, refuse_composites)
    for d in range(6):
        (src / f"d{d}").mkdir(parents=True)
        for i in range(10):
            path = src / f"d{d}" / f"f{i}"
            path.write_text(f"{d}/{i}")
            lustre.set(path, PFL if i < 7 else STRIPED)
    summary = copy(tmp_path, workers=3)
    assert summary.error_count == 0, summary.errors
    assert_same_tree(src, tmp_path / "dst")
    assert layout_counters(summary) == {"layout_default_pfl": 42}
    tries = [value for _, value in lustre.sets() if value[:4] == struct.pack("=I", COMP)]
    assert 1 <= len(tries) <= 3  # learnt at each worker's first refusal
    assert sum(1 for _, value in lustre.sets() if value == reused(STRIPED)) == 18
    (record,) = (tmp_path / "state").glob("*-copy-*")
    store = PassStore(record)
    shares = [w.get("layout_default_pfl", 0) for w in store.workers.values()]
    store.close()
    assert sum(shares) == 42 and sum(1 for n in shares if n) > 1  # several workers' counts


def test_pool_map_renames_and_a_pool_the_target_lacks_is_dropped(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    src.mkdir()
    lustre = FakeLustre(monkeypatch)
    for name, blob in (("hot", POOLED), ("cold", ARCHIVED)):
        (src / name).write_text(name)
        lustre.set(src / name, blob)
    summary = copy(tmp_path, pool_map=(("flash", "ssd"),), target_pools=("ssd", "hdd"))
    assert summary.error_count == 0, summary.errors
    dst = tmp_path / "dst"
    assert lustre.of(dst / "hot") == v3(RAID0, 4 * MiB, 2, 0xFFFF, b"ssd", oi=(0, 0))
    assert lustre.of(dst / "cold") == v3(RAID0, 4 * MiB, 2, 0xFFFF, b"", oi=(0, 0))


@pytest.mark.parametrize("setting, value", [
    ("POOL_MAP", "flash"), ("POOL_MAP", "flash:a-pool-name-too-long"),
    ("TARGET_POOLS", "ssd,has space"), ("LAYOUT", "stripe"), ("RELEASED", "recall"),
])
def test_a_bad_lustre_setting_is_one_line_and_exit_2(tmp_path: Path, setting: str,
                                                     value: str) -> None:
    (tmp_path / "src").mkdir()
    settings: dict[str, Any] = {setting: value}
    proc = fsclone("pass", "copy", tmp_path / "src", tmp_path / "dst", state=tmp_path / "st",
                   **settings)
    assert proc.returncode == 2, proc
    err = proc.stderr.decode().strip()
    assert len(err.splitlines()) == 1 and setting in err, err
    assert not (tmp_path / "dst").exists()


# -- HSM-released files -----------------------------------------------------------------------

def released_tree(tmp_path: Path, lustre: FakeLustre) -> list[str]:
    """Released files in several directories (one named like a comment), one current copy
    of a released file already in the target, and files on disk."""
    src = tmp_path / "src"
    names = ["z/late", "a/early", "#hash", "m/mid", "a/b/deep"]
    for name in (*names, "online", "copied"):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text(name)
        os.utime(src / name, ns=(10**18, 10**18))  # an atime a read would move
    for name in names:
        lustre.set(src / name, GONE_TO_TAPE)
    lustre.set(src / "online", STRIPED)
    return sorted(names)


def opened(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names the workers open to read (fs.dirs.open_file), recorded."""
    names: list[str] = []
    real = dirs.open_file

    def open_file(name: str, dir_fd: int) -> int:
        names.append(name)
        return real(name, dir_fd)

    monkeypatch.setattr(dirs, "open_file", open_file)
    return names


def test_released_files_are_not_read_but_counted_and_listed_sorted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lustre = FakeLustre(monkeypatch)
    released = released_tree(tmp_path, lustre)
    src, dst = tmp_path / "src", tmp_path / "dst"
    dst.mkdir()
    (dst / "z").mkdir()
    (dst / "z/late").write_text("an older copy")  # kept as it is: never deleted
    reads = opened(monkeypatch)
    summary = copy(tmp_path, "sync", workers=3)
    assert summary.error_count == 0, summary.errors
    assert summary.counters["skipped_released"] == len(released)
    assert {os.path.basename(n) for n in reads}.isdisjoint(
        os.path.basename(n) for n in released)
    for name in released:
        assert os.stat(src / name).st_atime_ns == 10**18, name
    assert (dst / "z/late").read_text() == "an older copy"
    assert [n for n in released if (dst / n).exists()] == ["z/late"]
    assert (dst / "online").read_text() == "online"
    listed = Path(summary.released)
    assert listed.parent.parent == tmp_path / "state" and listed.name == RELEASED_LIST
    assert listed.read_text().splitlines() == [
        f"./{n}" if n.startswith("#") else n for n in released]
    assert listed.stat().st_mode & 0o777 == 0o600


def test_a_released_file_whose_copy_is_current_settles_unread(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lustre = FakeLustre(monkeypatch)
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("data")
    first = copy(tmp_path)
    assert first.error_count == 0 and first.counters["files_copied"] == 1
    lustre.set(src / "f", GONE_TO_TAPE)  # released since its copy
    reads = opened(monkeypatch)
    again = copy(tmp_path, "sync", checksum=True)
    assert again.error_count == 0, again.errors
    assert again.counters.get("skipped_released", 0) == 0 and not again.released
    assert again.counters["unchanged"] == 1
    assert "f" not in reads


def test_a_released_file_whose_copy_has_other_names_is_not_rewritten(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A current copy still linked to other names is rewritten for a file on disk (links
    split in the source); a released file's is not, as that would read it."""
    lustre = FakeLustre(monkeypatch)
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    (src / "f").write_text("data")
    assert copy(tmp_path).counters["files_copied"] == 1
    os.link(dst / "f", dst / "other-name")
    lustre.set(src / "f", GONE_TO_TAPE)
    reads = opened(monkeypatch)
    again = copy(tmp_path)
    assert again.error_count == 0, again.errors
    assert "f" not in reads and again.counters.get("files_copied", 0) == 0
    assert os.stat(dst / "f").st_nlink == 2


def test_released_copy_reads_them_and_clears_the_flag_in_the_new_layout(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lustre = FakeLustre(monkeypatch)
    released = released_tree(tmp_path, lustre)
    summary = copy(tmp_path, released="copy")
    assert summary.error_count == 0, summary.errors
    assert "skipped_released" not in summary.counters and not summary.released
    assert_same_tree(tmp_path / "src", tmp_path / "dst")
    for name in released:
        assert lustre.of(tmp_path / "dst" / name) == v1(RAID0, MiB, 2, 0xFFFF, oi=(0, 0))


def test_released_files_once_restored_are_copied_by_files_from_their_list(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lustre = FakeLustre(monkeypatch)
    released = released_tree(tmp_path, lustre)
    first = copy(tmp_path, workers=2)
    assert first.counters["skipped_released"] == len(released)
    for name in released:  # the site's restore: the data is back on disk
        lustre.set(tmp_path / "src" / name, STRIPED)
    rerun = copy(tmp_path, files_from=first.released)
    assert rerun.error_count == 0, rerun.errors
    assert rerun.counters["files_copied"] == len(released)
    assert "skipped_released" not in rerun.counters
    assert_same_tree(tmp_path / "src", tmp_path / "dst")
    for name in released:
        assert lustre.of(tmp_path / "dst" / name) == reused(STRIPED)


def test_the_released_list_survives_a_resume_and_is_rewritten_sorted(tmp_path: Path) -> None:
    from fsclone.spec import PassSpec

    spec = PassSpec(id="20260101-000000-copy-abcdef", op="copy", src="/s", dst="/d",
                    started=0.0)
    store = PassStore.create(tmp_path, spec)
    store.add_released(["b/x", "a\nnewline", "#c"])
    store.commit()
    store.close()
    resumed = PassStore(tmp_path / spec.id)
    resumed.add_released(["b/x", "a/y"])  # a redone chunk's again, and a new one
    listed = resumed.write_released()
    assert listed is not None
    assert listed.read_bytes() == b"./#c\0a\nnewline\0a/y\0b/x\0"  # NUL: a name with a newline
    resumed.close()


def test_the_summary_has_one_line_per_fallback_kind_and_names_the_released_list(
        capsys: pytest.CaptureFixture[str]) -> None:
    counters = {"scanned": 90, "files_copied": 80, "layout_default_pfl": 42,
                "layout_default_dom": 3, "skipped_released": 5}
    summary = Summary("done", counters, released="/state/P/released.txt")
    Console(quiet=False, as_json=False).summary("P", "copy", summary, False)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split() for line in lines if "default layout" in line] == [
        ["default", "layout:", "dom", "3"], ["default", "layout:", "pfl", "42"]]
    assert any(line.split()[-1] == "5" and "HSM-released" in line for line in lines)
    assert lines[-1].endswith("listed in /state/P/released.txt")
    Console(quiet=False, as_json=True).summary("P", "copy", summary, False)
    out = json.loads(capsys.readouterr().out)
    assert out["released"] == "/state/P/released.txt"
    assert out["counters"]["layout_default_pfl"] == 42
