"""Watching a pass without any service: `status` (list, one pass, --json, --watch on a terminal),
`errors`, `pass copy --retry-errors`, and `scan` with the ETA it gives later passes."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import socket
import subprocess
import sys
import termios
from pathlib import Path
from typing import Any

from fsclone.state.queries import list_passes, read_workers
from fsclone.stats import counters as C
from tests.clirun import fsclone, fsclone_env, fsclone_json, spawn
from tests.fstree import assert_rsync_clean, assert_same_tree
from tests.midpass import held, many_files
from tests.mounts import read_only
from tests.services import wait_for

HOST = socket.gethostname().split(".")[0]


def status_json(*args: str | Path, state: Path) -> Any:
    proc = fsclone("status", *args, "--json", state=state)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_status_lists_passes_and_one_pass_by_worker(tmp_path: Path) -> None:
    src, state = many_files(tmp_path / "src", dirs=8, files=20, size=1024), tmp_path / "state"
    rc, summary = fsclone_json("pass", "copy", "--workers", "2", src, tmp_path / "dst",
                               state=state)
    assert rc == 0
    [listed] = status_json(state=state)
    assert listed["pass"] == summary["pass"] and listed["status"] == "done"
    assert listed["counters"] == summary["counters"] and listed["source"] == "record"
    one = status_json(summary["pass"][:20], state=state)  # a unique prefix will do
    assert {w["worker"] for w in one["workers"]} >= {f"{HOST}.0", f"{HOST}.1"}
    total: dict[str, int] = {}
    for w in one["workers"]:
        C.add(total, w["counters"])
    assert total == summary["counters"]  # per-worker totals add up to the pass, exactly
    text = fsclone("status", state=state).stdout.decode()
    assert summary["pass"] in text and "copy  done" in text and "160 files" in text


def test_a_broken_record_spoils_neither_the_list_nor_another_pass(tmp_path: Path) -> None:
    src, state = many_files(tmp_path / "src", dirs=1, files=1, size=10), tmp_path / "state"
    _, done = fsclone_json("pass", "copy", src, tmp_path / "dst", state=state)
    broken = state / "20990101-000000-copy-ffffff"
    broken.mkdir()
    (broken / "pass.db").write_bytes(b"not a database")
    assert [v["pass"] for v in status_json(state=state)] == [done["pass"]]
    assert status_json(done["pass"], state=state)["status"] == "done"
    proc = fsclone("status", broken.name, state=state)
    assert proc.returncode == 2
    said = proc.stderr.decode().strip()
    assert said == f"fsclone: the record of pass {broken.name} cannot be read"


def test_a_resumed_coordinator_continues_the_worker_totals(tmp_path: Path) -> None:
    src, dst, state = many_files(tmp_path / "src"), tmp_path / "dst", tmp_path / "state"
    with held(src / "d039/f059"):
        proc = spawn("pass", "copy", "--workers", "2", src, dst, state=state)
        wait_for(lambda: any(r.counters.get("files_copied", 0) > 300 for r in list_passes(state)),
                 60, "progress")
        proc.kill()
        proc.wait()
    [killed] = list_passes(state)
    assert killed.counters["files_copied"] < 2400, "the pass ended before it could be killed"
    rc, summary = fsclone_json("pass", "copy", "--workers", "2", src, dst, state=state)
    assert rc == 0 and summary["pass"] == killed.spec.id
    workers = read_workers(state / summary["pass"])
    added: dict[str, int] = {}
    for counters in workers.values():
        C.add(added, counters)
    assert added == summary["counters"]  # both runs' work, credited worker by worker
    assert summary["counters"]["chunks_done"] > killed.counters["chunks_done"]


def test_status_watch_on_a_terminal(tmp_path: Path) -> None:
    src, dst, state = many_files(tmp_path / "src"), tmp_path / "dst", tmp_path / "state"
    with held(src / "d039/f059"):
        proc = spawn("pass", "copy", "--workers", "2", "--json", src, dst, state=state)
        [running] = wait_for(lambda: status_json(state=state), 30, "the pass record")
        screen = watch_screen(state, running["pass"], ["running (walk)"])
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert running["pass"] in screen and "Ctrl-C to quit" in screen
    screen = watch_screen(state, running["pass"], [f"{HOST}.0", f"{HOST}.1", "done"])
    assert "host / worker" in screen and f"\n  {HOST} " in screen
    assert "\x1b[H\x1b[2J" in screen  # each refresh redraws the whole screen


def watch_screen(state: Path, pass_id: str, expect: list[str]) -> str:
    """Run `status ID --watch` on a pseudo-terminal until the screen shows ``expect``, then
    press Ctrl-C; returns all it drew. It must exit 0 on Ctrl-C."""
    master, slave = pty.openpty()

    def controlling_tty() -> None:  # as a login shell would: Ctrl-C reaches the command
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(
        [sys.executable, "-m", "fsclone", "status", pass_id, "--watch", "--interval", "0.2"],
        stdin=slave, stdout=slave, stderr=slave, env=fsclone_env(state),
        preexec_fn=controlling_tty)
    os.close(slave)
    screen = b""

    def shows_all() -> bool:
        nonlocal screen
        screen += os.read(master, 65536)
        return screen.count(b"\x1b[H\x1b[2J") >= 2 and all(e.encode() in screen for e in expect)

    try:
        wait_for(shows_all, 60, f"the watch screen to show {expect}")
        os.write(master, b"\x03")
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
        os.close(master)
    return screen.decode(errors="replace")


def test_errors_lists_failed_items_and_retry_errors_redoes_only_them(tmp_path: Path) -> None:
    src, dst, state = tmp_path / "src", tmp_path / "dst", tmp_path / "state"
    many_files(src, dirs=3, files=4, size=100)
    assert fsclone_json("pass", "copy", src, dst, state=state)[0] == 0
    (src / "d001/new").write_text("a file the target cannot take")
    (src / "d001/sub").mkdir()
    (src / "d001/sub/x").write_text("below a directory the target cannot make")
    with read_only(dst / "d001"):
        rc, failed = fsclone_json("pass", "copy", src, dst, state=state)
    assert rc == 1 and failed["error_count"] == 3  # new, sub, and d001's own times

    listed = json.loads(fsclone("errors", failed["pass"], "--json", state=state).stdout)
    assert sorted((e["path"], e["op"], e["errno"]) for e in listed) == [
        ("d001", "dirmeta", 30), ("d001/new", "copy", 30), ("d001/sub", "copy", 30)]
    text = fsclone("errors", failed["pass"], state=state).stdout.decode()
    assert "d001/new\tcopy\tEROFS (30)\tRead-only file system\n" in text

    rc, retried = fsclone_json("pass", "copy", "--retry-errors", failed["pass"], state=state)
    assert rc == 0 and retried["error_count"] == 0
    # only the failed items were looked at: new, sub and what is below sub
    assert retried["counters"]["scanned"] == 3
    assert retried["counters"]["files_copied"] == 2
    assert_same_tree(src, dst)  # d001's times too: its barrier's dirmeta ran last
    assert_rsync_clean(src, dst)
    [shown] = [v for v in status_json(state=state) if v["pass"] == retried["pass"]]
    assert shown["retry_of"] == failed["pass"]


def test_retry_errors_refuses_other_roots(tmp_path: Path) -> None:
    src, state = many_files(tmp_path / "src", dirs=1, files=1, size=10), tmp_path / "state"
    _, done = fsclone_json("pass", "copy", src, tmp_path / "dst", state=state)
    proc = fsclone("pass", "copy", "--retry-errors", done["pass"], src, tmp_path / "other",
                   state=state)
    assert proc.returncode == 2 and b"leave SRC and DST out" in proc.stderr
    proc = fsclone("pass", "copy", "--retry-errors", "no-such-pass", state=state)
    assert proc.returncode == 2 and b"no pass no-such-pass" in proc.stderr


def make_scan_tree(root: Path) -> None:
    (root / "a/b").mkdir(parents=True)
    (root / "empty").write_bytes(b"")
    (root / "a/one").write_bytes(b"x")
    (root / "a/b/five").write_bytes(b"x" * 5)
    (root / "a/b/kib").write_bytes(b"x" * 1024)
    os.link(root / "a/b/kib", root / "a/kib-link")
    os.symlink("a/one", root / "sym")
    os.mkfifo(root / "fifo")


def test_scan_counts_like_dwalk(tmp_path: Path) -> None:
    src, state = tmp_path / "src", tmp_path / "state"
    make_scan_tree(src)
    proc = fsclone("scan", src, "--json", "--workers", "2", state=state)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    c = out["counters"]
    assert (c["scanned"], c["dirs"], c["files"], c["symlinks"], c["others"], c["hardlinks"]) \
        == (9, 2, 5, 1, 1, 2)
    assert c["bytes"] == 0 + 1 + 5 + 1024 + 1024
    assert out["histogram"] == [{"min": 0, "max": 1, "files": 1}, {"min": 1, "max": 2, "files": 1},
                                {"min": 4, "max": 8, "files": 1},
                                {"min": 1024, "max": 2048, "files": 2}]
    text = fsclone("scan", src, state=state).stdout.decode()
    assert "hard-linked files" in text and "size histogram of files:" in text
    assert "  [   1.0 KiB,    2.0 KiB)             2 ####" in text


def test_scan_total_gives_a_later_pass_its_eta(tmp_path: Path) -> None:
    src, dst, state = many_files(tmp_path / "src"), tmp_path / "dst", tmp_path / "state"
    assert fsclone("scan", src, "-q", state=state).returncode == 0
    with held(src / "d039/f059"):
        proc = spawn("pass", "copy", "--workers", "2", src, dst, state=state)

        def started() -> bool:
            return any(r.spec.op == "copy" and r.counters.get("scanned")
                       for r in list_passes(state))

        wait_for(started, 60, "the copy to make progress")
        [view] = [v for v in status_json(state=state) if v["op"] == "copy"]
    proc.communicate(timeout=120)
    assert proc.returncode == 0
    assert view["status"] == "running"
    assert view["expected_entries"] == 40 * 60 + 40
    assert 0 < view["fraction"] < 1 and view["eta"] is not None and view["eta"] >= 0
