"""``--log-file``: every line fsclone prints, with its time, appended to a file of the admin's
that no user can steer a root pass into another file by."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest

from tests.clirun import NOBODY, NOGROUP, fsclone
from tests.midpass import many_files

STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ ")


def test_the_log_file_gets_every_line_with_its_time(tmp_path: Path) -> None:
    src, dst, state = many_files(tmp_path / "src", 4, 10, 64), tmp_path / "dst", tmp_path / "st"
    log = tmp_path / "fsclone.log"
    proc = fsclone("pass", "copy", "--log-file", log, src, dst, state=state)
    assert proc.returncode == 0, proc.stderr
    st = log.lstat()
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    (src / "d000/f000").unlink()
    refused = fsclone("pass", "sync", "--max-delete", "0", "--log-file", log, src, dst,
                      state=state)
    assert refused.returncode == 2
    lines = log.read_text().splitlines()
    assert all(STAMP.match(line) for line in lines), lines
    said = [line[len("2026-01-01T00:00:00Z "):] for line in lines]
    heads = [line for line in said if line.startswith("fsclone pass ")]
    assert [re.sub(r" \(pid \d+\)$", "", head) for head in heads] == [
        f"fsclone pass copy --log-file {log} {src} {dst}",
        f"fsclone pass sync --max-delete 0 --log-file {log} {src} {dst}"]  # appended
    printed = proc.stdout.decode().splitlines()
    assert printed[0].startswith("pass ") and said[1:1 + len(printed)] == printed
    [refusal] = refused.stderr.decode().splitlines()
    assert said[-1] == refusal and "--max-delete 0" in refusal


def _victim(tmp_path: Path) -> Path:
    """A root file a user would like a root pass to write into."""
    victim = tmp_path / "shadow"
    victim.write_text("root:secret\n")
    victim.chmod(0o600)
    return victim


@pytest.mark.parametrize("case", ["inside-src", "inside-dst", "symlink", "hard-link",
                                  "not-ours", "others-write", "fifo", "device"])
def test_a_log_file_that_could_write_elsewhere_is_refused(tmp_path: Path, case: str) -> None:
    src, dst, state = many_files(tmp_path / "src", 2, 2, 64), tmp_path / "dst", tmp_path / "st"
    victim = _victim(tmp_path)
    log = {"inside-src": src / "d000/fsclone.log",
           "inside-dst": dst / "fsclone.log"}.get(case, tmp_path / "fsclone.log")
    if case == "inside-dst":
        dst.mkdir()
    elif case == "symlink":
        log.symlink_to(victim)
    elif case == "hard-link":
        os.link(victim, log)
    elif case in ("not-ours", "others-write"):
        log.write_text("")
        os.chown(log, NOBODY, NOGROUP) if case == "not-ours" else log.chmod(0o620)
    elif case == "fifo":  # opened without waiting for a reader, then refused
        os.mkfifo(log, 0o600)
    elif case == "device":
        os.mknod(log, 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # /dev/null's
    proc = fsclone("pass", "copy", "--log-file", log, src, dst, state=state, timeout=60)
    assert proc.returncode == 2
    [line] = proc.stderr.decode().splitlines()
    assert line.startswith("fsclone: ") and str(log) in line, line
    assert victim.read_text() == "root:secret\n"
    assert not list(state.glob("*/pass.db"))  # refused before the pass began
    assert not (src / "d000/fsclone.log").exists() and (case == "inside-dst") == dst.exists()
