"""Crashes, item errors and bad input: a pass always ends faithful, or says clearly why not."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from fsclone.config import Config
from fsclone.engine.coordinator import Hooks
from fsclone.engine.launch import PassRequest, run_pass
from fsclone.errors import Interrupted
from fsclone.lifecycle import INTERRUPTED
from fsclone.state.queries import list_passes
from fsclone.state.record import PassStore
from fsclone.transport.memory import MemoryTransport
from tests.clirun import children, fsclone, fsclone_json, spawn
from tests.faultmount import faulty
from tests.fstree import assert_rsync_clean, assert_same_tree, leftovers
from tests.midpass import held, many_files
from tests.mounts import read_only
from tests.services import wait_for


def copied_count(dst: Path) -> int:
    """Entries below ``dst``, listed with O_NOATIME: polling must not move the copy's atimes."""
    def count(fd: int) -> int:
        total = 0
        for entry in os.scandir(fd):
            total += 1
            if entry.is_dir(follow_symlinks=False):
                sub = os.open(entry.name, os.O_RDONLY | os.O_NOATIME, dir_fd=fd)
                try:
                    total += count(sub)
                finally:
                    os.close(sub)
        return total

    try:
        root = os.open(dst, os.O_RDONLY | os.O_NOATIME)
    except FileNotFoundError:
        return 0
    try:
        return count(root)
    except FileNotFoundError:
        return 0
    finally:
        os.close(root)


def test_worker_killed_mid_pass(tmp_path: Path) -> None:
    src, dst, state = many_files(tmp_path / "src"), tmp_path / "dst", tmp_path / "state"
    with held(src / "d039/f059"):
        proc = spawn("pass", "copy", "--workers", "2", "--json", src, dst, state=state)

        def workers_mid_pass() -> list[int] | None:
            return children(proc.pid) if copied_count(dst) > 100 else None

        workers = wait_for(workers_mid_pass, 60, "progress", poll=0.01)
        os.kill(workers[0], signal.SIGKILL)
        assert proc.poll() is None, "the pass ended before the kill"
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert_same_tree(src, dst)
    assert leftovers(dst) == []


def test_coordinator_killed_then_resumed(tmp_path: Path) -> None:
    src, dst, state = many_files(tmp_path / "src"), tmp_path / "dst", tmp_path / "state"
    with held(src / "d039/f059"):
        proc = spawn("pass", "copy", "--workers", "2", src, dst, state=state)
        wait_for(lambda: copied_count(dst) > 300, 60, "progress", poll=0.01)
        proc.kill()
        proc.wait()
    assert copied_count(dst) < 2400, "the pass ended before it could be interrupted"

    def resume() -> subprocess.CompletedProcess[bytes] | None:
        """The same pass again, once the killed coordinator's lock is free."""
        p = fsclone("pass", "copy", "--workers", "2", src, dst, state=state)
        return p if p.returncode != 2 else None

    resumed = wait_for(resume, 30, "lock", poll=0.01)
    assert resumed.returncode == 0, resumed.stderr
    assert b"resuming pass" in resumed.stderr
    assert_same_tree(src, dst)
    assert leftovers(dst) == []


def test_a_source_file_in_use_under_a_lease_is_copied_once_its_holder_lets_go(
        tmp_path: Path) -> None:
    """As a file an NFS client holds a delegation on, or a Samba client an oplock: the pass
    waits for it rather than listing it as failed."""
    src, dst, state = many_files(tmp_path / "src", dirs=2, files=3, size=1024), \
        tmp_path / "dst", tmp_path / "state"
    (src / "busy").mkdir()
    (src / "busy/in-use").write_bytes(b"being written elsewhere")
    with held(src / "busy/in-use") as lease:
        proc = spawn("pass", "copy", "--workers", "2", "--json", src, dst, state=state)
        wait_for(lease.breaking, 60, "the pass to try to open the file in use", poll=0.01)
        # the three directories and one of d000, d001 (the other may wait behind the held
        # file, on the same worker)
        wait_for(lambda: copied_count(dst) >= 3 + 3, 60, "other files copied", poll=0.01)
        assert proc.poll() is None, "the pass did not wait for the file in use"
    out, _ = proc.communicate(timeout=60)
    summary = json.loads(out)
    assert proc.returncode == 0, summary["errors"]
    assert summary["error_count"] == 0 and summary["counters"]["files_copied"] == 7
    assert_same_tree(src, dst)


def test_item_errors_are_listed_and_exit_1(tmp_path: Path) -> None:
    src, dst, state = many_files(tmp_path / "src", dirs=2, files=3), tmp_path / "dst", \
        tmp_path / "state"
    (dst / "d001").mkdir(parents=True)
    with read_only(dst / "d001"):
        proc = fsclone("pass", "copy", src, dst, state=state)
    assert proc.returncode == 1
    text = proc.stdout.decode()
    assert "errors                           4" in text  # 3 files, the dir's times
    assert "d001/f000: copy: [errno 30] Read-only file system" in text
    assert (dst / "d000/f002").exists()  # the rest of the pass went on
    rc, out = fsclone_json("pass", "copy", src, dst, state=state)
    assert rc == 0 and out["counters"]["files_copied"] == 3
    assert_rsync_clean(src, dst)


@pytest.mark.parametrize("case", [
    "missing", "inside", "contains", "same", "config-missing", "config-broken",
    "config-bad-value", "option", "age", "window-nan", "window-inf", "window-negative",
    "max-delete-negative", "workers-zero", "config-workers-zero", "config-negative-age",
    "env-dir-slice-zero", "env-range-size-negative", "env-report-interval-nan",
    "env-max-delete-negative"])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path: Path, case: str) -> None:
    src, state = tmp_path / "src", tmp_path / "state"
    (src / "sub").mkdir(parents=True)
    (src / "sub/f").write_text("x")
    broken = tmp_path / "broken.py"
    broken.write_text("WORKERS = (\n")
    badvalue = tmp_path / "bad.py"
    badvalue.write_text("OLDEST_DATE = 'ninety days'\n")
    noworkers = tmp_path / "noworkers.py"
    noworkers.write_text("WORKERS = 0\n")
    negage = tmp_path / "negage.py"
    negage.write_text("OLDEST_DATE = -5\n")
    dst = tmp_path / "dst"
    cases: dict[str, list[str | Path]] = {
        "missing": ["pass", "copy", tmp_path / "nope", dst],
        "inside": ["pass", "copy", src, src / "sub/copy"],
        "contains": ["pass", "copy", src / "sub", src],
        "same": ["pass", "copy", src, tmp_path / "src/../src"],
        "config-missing": ["pass", "copy", "--config", tmp_path / "none.py", src, dst],
        "config-broken": ["pass", "copy", "--config", broken, src, dst],
        "config-bad-value": ["pass", "copy", "--config", badvalue, src, dst],
        "option": ["pass", "copy", "--no-such-option", src, dst],
        "age": ["pass", "copy", "--newest", "yesterday", src, dst],
        "window-nan": ["pass", "copy", "--modify-window", "nan", src, dst],
        "window-inf": ["pass", "copy", "--modify-window", "inf", src, dst],
        "window-negative": ["pass", "copy", "--modify-window", "-5", src, dst],
        "max-delete-negative": ["pass", "sync", "--max-delete", "-1", src, dst],
        "workers-zero": ["pass", "copy", "-w", "0", src, dst],
        "config-workers-zero": ["pass", "copy", "--config", noworkers, src, dst],
        "config-negative-age": ["pass", "copy", "--config", negage, src, dst],
    }
    settings: dict[str, Any] = {"env-dir-slice-zero": {"dir_slice": "0"},
                "env-range-size-negative": {"range_size": "-1"},
                "env-report-interval-nan": {"report_interval": "nan"},
                "env-max-delete-negative": {"max_delete": "-1"}}.get(case, {})
    args = cases.get(case, ["pass", "sync", src, dst])
    before = sorted(p for p in tmp_path.rglob("*"))
    proc = fsclone(*args, state=state, **settings)
    assert proc.returncode == 2
    lines = proc.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fsclone: "), lines
    assert sorted(p for p in tmp_path.rglob("*") if not p.is_relative_to(state)) == before
    assert not any(state.glob("*/pass.db"))


def _pass_counters(state: Path) -> dict[str, int]:
    (record,) = list_passes(state)
    return record.counters


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_the_pass_and_says_how_to_resume(tmp_path: Path,
                                                        signum: signal.Signals) -> None:
    """Ctrl-C, or SIGTERM as a walltime end sends it: to every process of the pass, and the
    coordinator twice (a second scancel). The record is kept, one line says how to resume, and
    the resumed pass does not redo the chunks the first run finished."""
    src, dst, state = many_files(tmp_path / "src"), tmp_path / "dst", tmp_path / "state"
    with held(src / "d039/f059"):
        proc = spawn("pass", "copy", "--workers", "2", src, dst, state=state)
        wait_for(lambda: copied_count(dst) > 200, 60, "progress", poll=0.01)
        for pid in [proc.pid, *children(proc.pid), proc.pid]:
            os.kill(pid, signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()
    (stopped,) = list_passes(state)
    assert stopped.status == "interrupted" and stopped.outstanding > 0
    assert err.decode().splitlines() == [
        f"fsclone: copy pass {stopped.spec.id} interrupted by {signum.name}; run the same "
        f"command again to resume (or: fsclone pass resume {stopped.spec.id})"]
    resumed = fsclone("pass", "copy", src, dst, state=state)
    assert resumed.returncode == 0 and b"resuming pass" in resumed.stderr
    assert_same_tree(src, dst)
    # a finished chunk done again would count its entries twice
    assert fsclone("pass", "copy", src, tmp_path / "once", state=tmp_path / "s2").returncode == 0
    counters, once = _pass_counters(state), _pass_counters(tmp_path / "s2")
    assert [counters[k] for k in ("scanned", "chunks_done")] == \
        [once[k] for k in ("scanned", "chunks_done")]
    assert counters["files_copied"] + counters.get("unchanged", 0) == once["files_copied"]


def test_a_second_signal_while_the_pass_records_the_first_leaves_it_interrupted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C pressed twice, or scancel sent twice: the second lands while the coordinator
    writes that the pass was interrupted, and must not leave its record saying "running"."""
    src = many_files(tmp_path / "src", dirs=4, files=4, size=16)
    real = PassStore.set_status

    def set_status(store: PassStore, status: str) -> None:
        if status == INTERRUPTED:
            os.kill(os.getpid(), signal.SIGINT)  # handled at the next bytecode, in here
        real(store, status)

    def stop(counters: dict[str, int], outstanding: int) -> None:
        raise KeyboardInterrupt  # the first signal, as it comes mid-pass

    monkeypatch.setattr(PassStore, "set_status", set_status)
    cfg = Config(workers=1, state_dir=str(tmp_path / "state"))
    with pytest.raises(Interrupted):
        run_pass(cfg, PassRequest("copy", str(src), str(tmp_path / "dst")),
                 Hooks(progress=stop, stats_interval=0), MemoryTransport())
    (stopped,) = list_passes(tmp_path / "state")
    assert stopped.status == INTERRUPTED


def test_sigterm_stops_a_scan_which_the_same_command_resumes(tmp_path: Path) -> None:
    with faulty(tmp_path, "src") as (src, fs):
        many_files(src, dirs=20, files=20, size=16)
        fs.delay("meta", 3_000)  # a scan only looks up and stats: slow those down
        proc = spawn("scan", "--workers", "2", src, state=tmp_path / "state")
        wait_for(lambda: any(r.counters.get("scanned", 0) > 20
                             for r in list_passes(tmp_path / "state")), 60, "progress")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        fs.delay("meta", 0)
        assert proc.returncode == 130, err.decode()
        (scan,) = list_passes(tmp_path / "state")
        assert err.decode().splitlines() == [
            f"fsclone: scan {scan.spec.id} interrupted by SIGTERM; run the same command again "
            "to resume"]
        again = fsclone("scan", src, state=tmp_path / "state")
    assert again.returncode == 0 and f"resuming scan {scan.spec.id}".encode() in again.stderr
    (resumed,) = list_passes(tmp_path / "state")
    assert resumed.status == "done" and resumed.counters["files"] == 400
