"""Pure logic: the wire format and its validation, configuration precedence, filters."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import stat
from pathlib import Path

import pytest

from fsclone.ages import parse_age
from fsclone.chunk import Chunk, Group, ItemError, Result, dumps, loads_chunk, loads_result
from fsclone.config import load, read_site_file
from fsclone.errors import ConfigError, MessageError, UsageError
from fsclone.filters import Filters
from fsclone.fs import data, dirs
from fsclone.fs.unnamed import UnnamedFiles
from fsclone.lifecycle import DONE
from fsclone.rules import EXCLUDE, from_lines
from fsclone.spec import PassSpec
from fsclone.state.queries import find_unfinished
from fsclone.state.record import PassStore
from tests.midpass import held

HOSTILE = os.fsdecode(b"bad \xff\xfe name\nwith newline")


def test_chunks_and_results_survive_the_wire_with_any_name() -> None:
    chunk = Chunk(op="copy", path=f"a/{HOSTILE}", names=(HOSTILE, "*?"), group="g", attempt=2,
                  args={"new": True})
    body = dumps(chunk)
    assert body.isascii()
    assert loads_chunk(body) == chunk
    result = Result(chunk=chunk, counters={"scanned": 3}, children=[chunk],
                    groups=[Group("g", 2, chunk)], errors=[ItemError(HOSTILE, "copy", 13, "no")],
                    deletions=[("a", (HOSTILE,), 4)], actions=["copy x"], worker="h.1")
    assert loads_result(dumps(result)) == result


@pytest.mark.parametrize("path", ["/etc", "a/../../etc", "..", "a//b", "./a", "a\0b"])
def test_unsafe_paths_in_messages_are_refused(path: str) -> None:
    body = json.dumps({"id": "x", "op": "copy", "path": path, "names": None}).encode()
    with pytest.raises(MessageError):
        loads_chunk(body)


@pytest.mark.parametrize("body", [b"not json", b"{}", b'{"op": 1}', b"[]",
                                  b'{"id":"x","op":"copy","path":"a","names":["a/b"]}'])
def test_malformed_messages_are_refused(body: bytes) -> None:
    with pytest.raises(MessageError):
        loads_chunk(body)


def test_config_precedence_defaults_file_env_flags(tmp_path: Path) -> None:
    site = tmp_path / "config.py"
    site.write_text("WORKERS = 3\nNEWEST_DATE = '2d'\nREPORT_INTERVAL = 5\n_helper = 1\n")
    cfg = load(str(site), {"FSCLONE_REPORT_INTERVAL": "7"}, {"workers": 9, "newest": None})
    assert (cfg.workers, cfg.newest, cfg.report_interval) == (9, 2 * 86400, 7.0)
    assert load(None, {"FSCLONE_CONFIG": str(site)}, {}).workers == 3


def test_config_example_is_a_valid_config() -> None:
    example = Path(__file__).parent.parent / "config.py.example"
    assert read_site_file(str(example))["username"] == "datamove"


@pytest.mark.parametrize("text", ["WORKERS = 'many'\n", "WORKRES = 2\n", "import nosuchmod\n"])
def test_bad_configs_are_refused(tmp_path: Path, text: str) -> None:
    site = tmp_path / "config.py"
    site.write_text(text)
    with pytest.raises(ConfigError):
        load(str(site), {}, {})


def test_ages() -> None:
    assert [parse_age(x) for x in ("90d", "12h", "30m", "45", "2w", "0")] == [
        7776000, 43200, 1800, 45, 1209600, 0]
    with pytest.raises(UsageError):
        parse_age("yesterday")


def test_filter_rules_follow_rsync_reading() -> None:
    """The cases the rsync comparison (tests/test_filters.py) cannot see: the directory flag of
    a target entry, and rules read from a file's lines."""
    spec = PassSpec(id="p", op="copy", src="/s", dst="/d", started=0.0,
                    filter_rules=("+ keep.o", "- *.o", "- build/tmp", "- cache/", "- /top"))
    f = Filters(spec)
    assert f.excluded("x/y/a.o", False) and not f.excluded("x/keep.o", False)
    assert f.excluded("build/tmp", False) and f.excluded("src/build/tmp", True)
    assert f.excluded("deep/cache", True) and not f.excluded("deep/cache", False)
    assert f.excluded("top", False) and not f.excluded("x/top", False)
    assert not f.excluded("a.c", False)
    assert from_lines("a\r\n\n# c\n; d\n+ b\n e\n!", EXCLUDE) == ["- a", "+ b", "-  e", "!"]


def test_the_sites_excludes_come_before_the_command_lines_rules() -> None:
    """EXCLUDES name what must never be copied: first, no include of the command line can
    take them back."""
    cfg = load(None, {"FSCLONE_EXCLUDES": ".snapshot,lost+found"}, {"filter_rules": ("+ *",)})
    assert cfg.filter_rules == ("- .snapshot", "- lost+found", "+ *")
    assert Filters(PassSpec(id="p", op="copy", src="/s", dst="/d", started=0.0,
                            filter_rules=cfg.filter_rules)).excluded("a/.snapshot", True)


def test_unnamed_file_is_invisible_until_linked_and_never_replaces(tmp_path: Path) -> None:
    unnamed = UnnamedFiles()
    dfd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fd = unnamed.open(dfd, 0o444)  # its final mode: the fd still writes
        assert fd is not None
        os.write(fd, b"complete")
        assert os.listdir(tmp_path) == []
        unnamed.link(fd, dfd, "name")
        assert stat.S_IMODE(os.stat(tmp_path / "name").st_mode) == 0o444
        with pytest.raises(FileExistsError):
            unnamed.link(fd, dfd, "name")
        os.close(fd)
    finally:
        os.close(dfd)
    assert (tmp_path / "name").read_bytes() == b"complete"


def test_unnamed_file_is_linked_through_proc_without_the_capability(tmp_path: Path) -> None:
    """Without CAP_DAC_READ_SEARCH (older kernels, non-root) linkat(fd, "") answers ENOENT:
    the link goes through /proc/self/fd instead, from then on."""
    unnamed = UnnamedFiles()

    def linkat_without_capability(*args: object) -> int:
        ctypes.set_errno(errno.ENOENT)
        return -1

    unnamed._linkat, unnamed._get_errno = linkat_without_capability, ctypes.get_errno
    dfd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in ("first", "second"):
            fd = unnamed.open(dfd, 0o600)
            assert fd is not None
            os.write(fd, name.encode())
            unnamed.link(fd, dfd, name)
            os.close(fd)
            assert unnamed._empty_path is False
    finally:
        os.close(dfd)
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {"first": "first",
                                                                   "second": "second"}


@pytest.mark.parametrize("refusal, calls", [(errno.EXDEV, 1), (errno.EINVAL, 3)])
def test_kernel_copy_refused_for_a_filesystem_pair_is_not_retried_per_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, refusal: int, calls: int) -> None:
    """EXDEV is about the pair of filesystems: learnt once. EINVAL may be about one file: every
    file tries the kernel again. Either way the data arrives, through user space."""
    tried: list[int] = []

    def refuse(*args: object) -> int:
        tried.append(1)
        raise OSError(refusal, os.strerror(refusal))

    monkeypatch.setattr(os, "copy_file_range", refuse)
    monkeypatch.setattr(data, "_REFUSED", set())
    for i in range(3):
        payload = b"payload %d" % i * 1000
        (tmp_path / f"s{i}").write_bytes(payload)
        with open(tmp_path / f"s{i}", "rb") as s, open(tmp_path / f"d{i}", "wb") as d:
            assert data.copy_whole(s.fileno(), d.fileno(), len(payload), False, (1, 2)) == \
                len(payload)
        assert (tmp_path / f"d{i}").read_bytes() == (tmp_path / f"s{i}").read_bytes()
    assert len(tried) == calls


@pytest.mark.parametrize("leased", [True, False])
def test_an_open_refused_with_ewouldblock_waits_only_for_a_lease(
        monkeypatch: pytest.MonkeyPatch, leased: bool) -> None:
    """EWOULDBLOCK on a file the kernel lists a lease on is waited out (up to the lease times);
    twice with no lease it is a filesystem's own answer, listed at once (files out on tape must
    not cost a minute each)."""
    tried: list[str] = []

    def refuse(name: str, flags: int, dir_fd: int | None) -> int:
        tried.append(name)
        raise BlockingIOError(errno.EWOULDBLOCK, "Resource temporarily unavailable")

    monkeypatch.setattr(dirs, "_open_noatime", refuse)
    monkeypatch.setattr(dirs, "_under_lease", lambda name, dir_fd: leased)
    monkeypatch.setattr(dirs, "_lease_wait", lambda: 0.2)
    with pytest.raises(BlockingIOError):
        dirs.open_file("busy", 0)
    # without a lease, one more try: the lease may have been let go since the first refusal
    assert len(tried) > 2 if leased else tried == ["busy", "busy"]


def test_a_lease_on_a_file_is_seen_in_proc_locks(tmp_path: Path) -> None:
    (tmp_path / "held").write_text("in use")
    (tmp_path / "free").write_text("not in use")
    dfd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with held(tmp_path / "held"):
            assert dirs._under_lease("held", dfd)
            assert not dirs._under_lease("free", dfd)
    finally:
        os.close(dfd)


def test_the_pass_to_resume_is_the_newest_unfinished_one_of_the_same_op_and_roots(
        tmp_path: Path) -> None:
    state = tmp_path / "state"

    def record(stamp: str, op: str, dst: str = "/d", done: bool = False,
               retry_of: str = "") -> str:
        spec = PassSpec(id=f"20260101-{stamp}-{op}-abcdef", op=op, src="/s", dst=dst,
                        started=0.0, retry_of=retry_of)
        store = PassStore.create(state, spec)
        if done:
            store.set_status(DONE)
        store.close()
        return spec.id

    older = record("000001", "copy")
    record("000002", "copy", done=True)
    record("000003", "delete")
    record("000004", "copy", dst="/elsewhere")
    record("000005", "copy", retry_of=older)
    broken = state / "20260101-000006-copy-abcdef"
    broken.mkdir()
    (broken / "pass.db").write_bytes(b"not a database")
    assert find_unfinished(state, "copy", "/s", "/d") == older
    assert find_unfinished(state, "delete", "/s", "/d") == "20260101-000003-delete-abcdef"
    assert find_unfinished(state, "sync", "/s", "/d") is None
    assert find_unfinished(tmp_path / "none", "copy", "/s", "/d") is None
