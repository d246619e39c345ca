"""What a person sees: the live progress line on a terminal, -q, --json, -v."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import time
from pathlib import Path

from tests.clirun import fsclone, fsclone_env


def small_tree(root: Path, n: int = 300) -> Path:
    for i in range(n):
        d = root / f"d{i % 10}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}").write_bytes(b"x" * i)
    return root


def test_progress_line_on_a_terminal(tmp_path: Path) -> None:
    src = small_tree(tmp_path / "src", 3000)
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "fsclone", "pass", "copy", str(src),
                             str(tmp_path / "dst")], stdin=slave, stdout=slave, stderr=slave,
                            env=fsclone_env(tmp_path / "state"))
    os.close(slave)
    screen = b""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        screen += chunk
    proc.wait(timeout=60)
    os.close(master)
    text = screen.decode(errors="replace")
    assert proc.returncode == 0, text
    assert "\r\x1b[K" in text and "scanned," in text and "chunks to go" in text
    assert "files copied                     3,000" in text


def test_quiet_prints_nothing_and_json_is_one_document(tmp_path: Path) -> None:
    src = small_tree(tmp_path / "src")
    proc = fsclone("pass", "copy", "-q", src, tmp_path / "dst", state=tmp_path / "state")
    assert proc.returncode == 0 and proc.stdout == b"" and proc.stderr == b""
    proc = fsclone("pass", "copy", "--json", src, tmp_path / "dst", state=tmp_path / "state")
    doc = json.loads(proc.stdout)
    assert doc["status"] == "done" and doc["op"] == "copy" and doc["error_count"] == 0
    assert doc["counters"]["unchanged"] == 300


def test_verbose_lists_every_change(tmp_path: Path) -> None:
    src = small_tree(tmp_path / "src", 20)
    proc = fsclone("pass", "copy", "-v", src, tmp_path / "dst", state=tmp_path / "state")
    lines = proc.stdout.decode().splitlines()
    assert sum(line.startswith("copy d") for line in lines) == 20
    assert sum(line.startswith("mkdir d") for line in lines) == 10
