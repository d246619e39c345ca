"""Resumes, refusals and ends of passes: a resume never changes what was asked, every way out
cleans up after the pass, a superseded pass leaves nothing behind, exit 0 means everything went
over, and a resume is not an attempt."""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import subprocess
from collections.abc import Iterable
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from fsclone.chunk import Chunk, ItemError, Result
from fsclone.engine.coordinator import Coordinator
from fsclone.lifecycle import UNFINISHED
from fsclone.spec import PassSpec, as_flags, differences
from fsclone.state.directory import pass_ids
from fsclone.state.queries import read_chunks, read_errors, read_record
from fsclone.state.record import PassStore
from fsclone.transport.base import Transport
from tests.clirun import PathLike, fsclone, spawn
from tests.fstree import assert_same_tree, leftovers
from tests.midpass import Lease, held, many_files
from tests.services import wait_for

#: the fixture's (SRC, DST, state, pass id)
Interrupted = tuple[Path, Path, Path, str]


def _tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def _interrupt(args: Iterable[PathLike], lease: Lease, state: Path, **settings: Any) -> str:
    """Start a pass, kill its coordinator once a worker waits on the held file, and return the
    id of the pass left unfinished."""
    before = set(pass_ids(state))
    proc = spawn("pass", *args, "--workers", "2", state=state, **settings)
    wait_for(lease.breaking, 60, "the pass to reach the held file", poll=0.01)
    proc.kill()
    proc.communicate(timeout=30)
    (pass_id,) = set(pass_ids(state)) - before
    return pass_id


def _once_unlocked(*args: PathLike, state: Path, **settings: Any,
                   ) -> subprocess.CompletedProcess[bytes]:
    """Run a command once the killed coordinator's workers have let go of the target lock."""
    def run() -> subprocess.CompletedProcess[bytes] | None:
        proc = fsclone(*args, state=state, **settings)
        return None if b"another pass is running" in proc.stderr else proc

    result: subprocess.CompletedProcess[bytes] = wait_for(run, 30, "the lock", poll=0.05)
    return result


# -- a resume never changes the request ------------------------------------------------------

def test_a_pass_refused_by_its_guard_leaves_nothing_to_resume(tmp_path: Path) -> None:
    """The new pass must honour its own --exclude: keepme, target-only and excluded, stays."""
    src = _tree(tmp_path / "src", {"a": "a"})
    dst = _tree(tmp_path / "dst", {"a": "a", "keepme": "mine"})
    state = tmp_path / "state"
    refused = fsclone("pass", "sync", "--sentinel", ".mounted", src, dst, state=state)
    assert refused.returncode == 2 and b"sentinel" in refused.stderr
    assert pass_ids(state) == []
    (src / ".mounted").write_text("")
    again = fsclone("pass", "sync", "--sentinel", ".mounted", "--exclude", "keepme", src, dst,
                    state=state)
    assert again.returncode == 0, again.stderr
    assert b"resuming" not in again.stderr
    assert (dst / "keepme").read_text() == "mine"


def test_an_interrupted_dry_run_leaves_nothing_to_resume(tmp_path: Path) -> None:
    src, dst, state = many_files(tmp_path / "src", dirs=4, files=10), tmp_path / "dst", \
        tmp_path / "state"
    assert fsclone("pass", "copy", src, dst, state=state).returncode == 0
    _tree(src, {f"new/f{i}": "new" for i in range(20)})
    with held(src / "d003/f009") as lease:  # --checksum reads it: the dry run waits there
        dry = _interrupt(["copy", "-n", "-c", src, dst], lease, state)
    resumed = fsclone("pass", "resume", dry, state=state)
    assert resumed.returncode == 2 and b"dry run" in resumed.stderr
    copy = _once_unlocked("pass", "copy", "-q", src, dst, state=state)
    assert copy.returncode == 0, copy.stderr
    assert copy.stdout == b""
    assert_same_tree(src, dst)


@pytest.fixture
def interrupted_sync(tmp_path: Path) -> tuple[Path, Path, Path, str]:
    """A sync with both guards, killed in its walk, of a target with 501 entries to delete."""
    src, dst, state = many_files(tmp_path / "src", dirs=4, files=10), tmp_path / "dst", \
        tmp_path / "state"
    (src / ".mounted").write_text("")
    assert fsclone("pass", "copy", src, dst, state=state).returncode == 0
    _tree(dst, {f"gone/f{i:03}": "x" for i in range(500)})
    (dst / "d003/f009").write_text("stale")  # so that the sync copies (and opens) it
    with held(src / "d003/f009") as lease:
        pass_id = _interrupt(["sync", "--max-delete", "10", "--sentinel", ".mounted", src, dst],
                             lease, state)
    return src, dst, state, pass_id


def test_a_resume_by_id_keeps_the_max_delete_guard(interrupted_sync: Interrupted) -> None:
    _, dst, state, pass_id = interrupted_sync
    resumed = _once_unlocked("pass", "resume", pass_id, state=state)
    assert resumed.returncode == 2, resumed.stderr
    assert b"would delete 501 entries, more than --max-delete 10" in resumed.stderr
    assert len(os.listdir(dst / "gone")) == 500


def test_a_resume_by_id_keeps_the_sentinel_guard(interrupted_sync: Interrupted) -> None:
    src, dst, state, pass_id = interrupted_sync
    (src / ".mounted").unlink()
    resumed = _once_unlocked("pass", "resume", pass_id, state=state)
    assert resumed.returncode == 2, resumed.stderr
    assert b"sentinel '.mounted' is missing" in resumed.stderr
    assert len(os.listdir(dst / "gone")) == 500
    assert read_record(state / pass_id).status in UNFINISHED  # still there to resume


def test_a_resume_asked_with_other_options_is_refused_and_says_the_ways_on(
        tmp_path: Path) -> None:
    src, dst, state = many_files(tmp_path / "src", dirs=4, files=10), tmp_path / "dst", \
        tmp_path / "state"
    with held(src / "d003/f009") as lease:
        pass_id = _interrupt(["copy", "--exclude", "d000", src, dst], lease, state)
    before = sorted(dst.rglob("*"))
    other = _once_unlocked("pass", "copy", "--exclude", "d001", src, dst, state=state)
    assert other.returncode == 2
    (line,) = other.stderr.decode().splitlines()
    assert pass_id in line and "--filter" in line and "--restart" in line, line
    assert f"fsclone pass copy --filter '- d000' {src} {dst}" in line, line
    assert sorted(dst.rglob("*")) == before
    same = fsclone("pass", "copy", "--exclude", "d000", src, dst, state=state)
    assert same.returncode == 0 and b"resuming pass " + pass_id.encode() in same.stderr


def test_a_resume_compares_the_rules_of_a_from_file_not_its_name(tmp_path: Path) -> None:
    """The pass keeps the rules an --exclude-from file held: the same file edited is another
    request (refused), another file with the same rules is the same one (resumed)."""
    src, dst, state = many_files(tmp_path / "src", dirs=4, files=10), tmp_path / "dst", \
        tmp_path / "state"
    rules = tmp_path / "rules"
    rules.write_text("# skipped\nd000\n")
    with held(src / "d003/f009") as lease:
        pass_id = _interrupt(["copy", "--exclude-from", rules, src, dst], lease, state)
    rules.write_text("# skipped\nd001\n")
    edited = _once_unlocked("pass", "copy", "--exclude-from", rules, src, dst, state=state)
    assert edited.returncode == 2 and b"--filter '- d000'" in edited.stderr, edited.stderr
    same = tmp_path / "same"
    same.write_text("d000\n; the same rule\n")
    resumed = fsclone("pass", "copy", "--exclude-from", same, src, dst, state=state)
    assert resumed.returncode == 0, resumed.stderr
    assert b"resuming pass " + pass_id.encode() in resumed.stderr
    assert not (dst / "d000").exists() and (dst / "d001").is_dir()


def test_a_rule_fsclone_cannot_read_is_a_usage_error(tmp_path: Path) -> None:
    """A --filter rule of another kind than '-', '+' or '!' (rsync's merge rules, say), and a
    rules file that cannot be read, stop the command before any pass starts."""
    src, dst, state = _tree(tmp_path / "src", {"a": "a"}), tmp_path / "dst", tmp_path / "state"
    for flag, value in (("--filter", ". rules"), ("--exclude-from", str(tmp_path / "missing"))):
        proc = fsclone("pass", "copy", flag, value, src, dst, state=state)
        assert proc.returncode == 2 and proc.stderr.count(b"\n") == 1, proc.stderr
        assert flag.encode() in proc.stderr
        assert not dst.exists() and pass_ids(state) == []


def test_options_compare_by_meaning_and_spell_as_flags() -> None:
    """Filter rules compare in order, a repeat and the rules before a '!' aside (they can never
    decide), and spell as --filter rules."""
    stored = PassSpec(id="p", op="sync", src="/s", dst="/d", started=0,
                      filter_rules=("- a", "+ b"), oldest=0, max_delete=10, sentinel=".m",
                      modify_window_ns=2_000_000_000)
    asked = PassSpec(id="q", op="sync", src="/s", dst="/d", started=1,
                     filter_rules=("- x", "!", "- a", "+ b", "- a"),
                     modify_window_ns=2_000_000_000, max_delete=10, sentinel=".m")
    assert differences(stored, asked) == []
    assert differences(stored, PassSpec(id="q", op="sync", src="/s", dst="/d", started=1,
                                        dry_run=True, filter_rules=("+ b", "- a"))) == \
        ["--dry-run", "--modify-window", "--filter", "--max-delete", "--sentinel"]
    assert as_flags(stored) == ["--modify-window", "2", "--filter", "- a", "--filter", "+ b",
                                "--max-delete", "10", "--sentinel", ".m"]


# -- cleanup on every way out ------------------------------------------------------------------

RANGES = {"large_file_size": 64 << 10, "range_size": 16 << 10}


def test_a_restart_sweeps_what_the_pass_it_supersedes_left(tmp_path: Path) -> None:
    src, dst, state = tmp_path / "src", tmp_path / "dst", tmp_path / "state"
    src.mkdir()
    (src / "big").write_bytes(os.urandom(1 << 20))
    (src / "a").write_text("linked")
    os.link(src / "a", src / "b")
    with held(src / "big") as lease:  # its ranges wait: its temp file stays in DST
        old = _interrupt(["copy", src, dst], lease, state, **RANGES)
    assert leftovers(dst), "the interrupted pass left nothing to sweep"
    restarted = _once_unlocked("pass", "copy", "--restart", src, dst, state=state, **RANGES)
    assert restarted.returncode == 0, restarted.stderr
    assert leftovers(dst) == []
    assert os.stat(dst / "a").st_nlink == 2
    assert f"pass {old} is superseded".encode() in restarted.stderr
    assert_same_tree(src, dst)
    resumed = fsclone("pass", "resume", old, state=state)
    assert resumed.returncode == 2 and b"superseded" in resumed.stderr


def test_a_sync_refused_by_max_delete_cleans_up(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src", {"a": "linked"})
    os.link(src / "a", src / "b")
    dst = _tree(tmp_path / "dst", {"x": "1", "y": "2", "z": "3"})
    state = tmp_path / "state"
    refused = fsclone("pass", "sync", "--max-delete", "1", src, dst, state=state)
    assert refused.returncode == 2 and b"more than --max-delete 1" in refused.stderr
    assert leftovers(dst) == []
    assert os.stat(dst / "a").st_nlink == 2
    assert os.stat(dst).st_mtime_ns == os.stat(src).st_mtime_ns
    assert read_record(state / pass_ids(state)[0]).status == "refused"


# -- exit 0 means everything went over ---------------------------------------------------------

def test_a_file_changed_while_it_was_copied_exits_3_with_a_line_under_quiet(
        tmp_path: Path) -> None:
    src, dst, state = many_files(tmp_path / "src", dirs=2, files=3, size=1024), \
        tmp_path / "dst", tmp_path / "state"
    busy = src / "d001/f002"
    with held(busy) as lease:
        proc = spawn("pass", "copy", "-q", "--workers", "2", src, dst, state=state)
        wait_for(lease.breaking, 60, "the pass to reach the held file", poll=0.01)
        # as a writer would between the listing and the copy (the lease refuses opens, so
        # the test moves the file's times: its mtime and ctime change as with an append)
        os.utime(busy, ns=(0, 10**18))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err
    assert out == b""
    assert err.decode().splitlines() == [
        "fsclone: 1 file changed while being copied and did not go over: run the pass again"]
    assert not (dst / "d001/f002").exists()
    again = fsclone("pass", "copy", src, dst, state=state)
    assert again.returncode == 0, again.stderr
    assert_same_tree(src, dst)


# -- a resume is not an attempt ----------------------------------------------------------------

class _Interrupting(Transport):
    """Takes the chunks of a pass, then the coordinator is interrupted before any result."""

    def __init__(self) -> None:
        self.submitted: list[Chunk] = []

    def start(self, spec: PassSpec) -> None:
        pass

    def submit(self, chunks: Iterable[Chunk]) -> None:
        self.submitted.extend(chunks)

    def poll(self, timeout: float) -> list[Result]:
        raise KeyboardInterrupt

    def lost(self) -> list[ItemError]:
        return []

    def stop(self) -> None:
        pass


def test_a_resumed_chunk_keeps_its_attempt_and_is_marked_redone(tmp_path: Path) -> None:
    spec = PassSpec(id="20260101-000000-copy-abcdef", op="copy", src="/s", dst="/d", started=0)
    PassStore.create(tmp_path, spec).close()
    runs: list[Chunk] = []
    for _ in range(3):
        transport = _Interrupting()
        store = PassStore(tmp_path / spec.id)
        with pytest.raises(KeyboardInterrupt):
            Coordinator(store, transport).run()
        store.close()
        runs += transport.submitted
    assert [c.attempt for c in runs] == [0, 0, 0]
    assert [c.redo for c in runs] == [False, True, True]
    assert Chunk.from_wire(runs[-1].to_wire()).redo


def test_a_pass_resumed_twice_gives_its_chunks_their_first_try_still(tmp_path: Path) -> None:
    src, dst, state = many_files(tmp_path / "src", dirs=4, files=10), tmp_path / "dst", \
        tmp_path / "state"
    with held(src / "d003/f009") as lease:
        pass_id = _interrupt(["copy", src, dst], lease, state)
    for _ in range(2):
        with held(src / "d003/f009") as lease:
            def resumed() -> subprocess.Popen[bytes] | None:
                proc = spawn("pass", "resume", pass_id, "--workers", "2", state=state)
                try:
                    wait_for(lambda: proc.poll() is not None or lease.breaking(), 30,
                             "the resume to start or stop", poll=0.01)
                except TimeoutError:
                    proc.kill()
                    raise
                if proc.poll() is not None:  # the lock was still held by the dead run
                    proc.communicate()
                    return None
                return proc

            proc = wait_for(resumed, 30, "a resume to reach the held file")
            proc.kill()
            proc.communicate(timeout=30)
    chunks = read_chunks(state / pass_id)
    assert chunks and {c.attempt for c in chunks} == {0}
    assert {c.redo for c in chunks} == {True}
    final = _once_unlocked("pass", "resume", pass_id, state=state)
    assert final.returncode == 0, final.stderr
    assert_same_tree(src, dst)


def test_a_record_from_before_error_steps_is_read_and_a_resume_of_it_writes_errors(
        tmp_path: Path) -> None:
    """A record whose errors table has no step and side (written by an earlier version) is
    read as it is (read-only: ``errors``, ``status``, ``--retry-errors``), and opened for a
    resume it takes errors with their step and side."""
    state = tmp_path / "state"
    spec = PassSpec(id="20260101-000000-copy-abcdef", op="copy", src=str(tmp_path / "src"),
                    dst=str(tmp_path / "dst"), started=0.0)
    PassStore.create(state, spec).close()
    with closing(sqlite3.connect(state / spec.id / "pass.db")) as db:
        db.executescript("DROP TABLE errors; CREATE TABLE errors (seq INTEGER PRIMARY KEY, "
                         "path BLOB, op TEXT, errno INTEGER, message TEXT)")
        db.execute("INSERT INTO errors (path, op, errno, message) VALUES (?,?,?,?)",
                   (b"old", "copy", errno.EACCES, "Permission denied"))
        db.commit()
    old = ItemError("old", "copy", errno.EACCES, "Permission denied")
    assert read_errors(state / spec.id) == [old]
    listed = fsclone("errors", spec.id, "--json", state=state)
    assert json.loads(listed.stdout) == [
        {"path": "old", "op": "copy", "errno": errno.EACCES, "message": "Permission denied"}]

    store = PassStore(state / spec.id)  # as a resume opens it
    new = ItemError("new", "copy", errno.EIO, "Input/output error", "data", "target")
    store.add_errors([new])
    store.commit()
    store.close()
    assert read_errors(state / spec.id) == [old, new]
