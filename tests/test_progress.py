"""Progress where no terminal is (a batch job's output): a line every --progress seconds with
the counts, the rate of the last interval, and percent and ETA once the tree is counted; and a
resumed pass's summary, which tells this run from the whole pass as ``status`` does."""

from __future__ import annotations

import io
import json
import re
import signal
import time
from pathlib import Path

import pytest

from fsclone.cli.display.console import Console
from fsclone.lifecycle import DONE, Summary
from fsclone.state.queries import list_passes
from fsclone.stats import counters as C
from tests.clirun import fsclone, fsclone_json, spawn
from tests.fstree import assert_same_tree
from tests.midpass import held, many_files
from tests.services import wait_for

#: a progress line, as stderr has it; the percent and ETA come once the tree's size is known
LINE = re.compile(r"fsclone: progress: (?P<scanned>[\d,]+) scanned, (?P<files>[\d,]+) files "
                  r"[\d.]+ \w+ copied, now (?P<entries_s>[\d,]+) entries/s, "
                  r"(?P<files_s>[\d,]+) files/s, [\d.]+ \w+/s, [\d,]+ errors, [\d,]+ chunks to go"
                  r"(?P<sized>, [\d.]+% of (?P<expected>[\d,]+) entries(, ETA [\w.]+)?)?")
#: the same line in the log file, after its UTC time
LOGGED = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ (" + LINE.pattern + ")")
#: entries of many_files' tree: 40 directories of 60 files, and the root
ENTRIES = 40 * 60 + 40


def _number(text: str) -> int:
    return int(text.replace(",", ""))


def progress_lines(text: str) -> list[re.Match[str]]:
    """The progress lines of stderr, each checked whole against :data:`LINE`."""
    lines = [line for line in text.splitlines() if line.startswith("fsclone: progress:")]
    matched = [LINE.fullmatch(line) for line in lines]
    assert all(matched), lines
    return [m for m in matched if m]


def logged(log: Path) -> list[re.Match[str]]:
    text = log.read_text() if log.exists() else ""
    return [m for m in map(LOGGED.fullmatch, text.splitlines()) if m]


def stalled(log: Path) -> re.Match[str] | None:
    """A logged line of an interval in which nothing was done, after some work."""
    return next((m for m in logged(log) if _number(m["files"]) > 0 and m["files_s"] == "0"
                 and m["entries_s"] == "0"), None)


def test_progress_lines_when_not_a_terminal_give_the_rate_of_the_last_interval(
        tmp_path: Path) -> None:
    """One worker is held on a file while the other copies the rest: then an interval passes
    in which nothing is done, and its line says 0 files/s, where the pass average is not 0."""
    src, dst, state = many_files(tmp_path / "src"), tmp_path / "dst", tmp_path / "state"
    log = tmp_path / "fsclone.log"
    with held(src / "d039/f059"):
        proc = spawn("pass", "copy", "-w", "2", "--progress", "1", "--log-file", log, src, dst,
                     state=state)
        line = wait_for(lambda: stalled(log), 90, "a progress line of a stalled interval")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert_same_tree(src, dst)
    lines = progress_lines(err.decode())
    assert len(lines) >= 2
    assert not any(m["sized"] for m in lines)  # nothing has counted this tree before
    assert line[1] in [m[0] for m in lines]  # stderr and the log have the same lines
    head = out.decode().splitlines()[0]
    average = re.search(r"\(([\d,]+) entries/s, ([\d,]+) files/s", head)
    assert average and _number(average[2]) > 0, head  # the pass average, beside the 0 above


def test_progress_lines_give_percent_and_eta_once_the_tree_is_counted(tmp_path: Path) -> None:
    src, dst, state = many_files(tmp_path / "src"), tmp_path / "dst", tmp_path / "state"
    assert fsclone("scan", "-q", src, state=state).returncode == 0
    log = tmp_path / "fsclone.log"

    def sized() -> re.Match[str] | None:
        return next((m for m in logged(log) if m["sized"] and "ETA" in m[0]), None)

    with held(src / "d039/f059"):  # its directory's entries count only once it is copied
        proc = spawn("pass", "copy", "-w", "2", "--progress", "1", "--log-file", log, src, dst,
                     state=state)
        line = wait_for(sized, 90, "a progress line with an ETA")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert _number(line["expected"]) == ENTRIES
    assert all(m["sized"] for m in progress_lines(err.decode()))


def test_progress_zero_writes_no_lines(tmp_path: Path) -> None:
    src, state = many_files(tmp_path / "src", dirs=4, files=10), tmp_path / "state"
    log = tmp_path / "fsclone.log"

    def ran_for(secs: float) -> bool:
        return any(r.ran is not None and r.run_started is not None
                   and r.ran + time.time() - r.run_started >= secs for r in list_passes(state))

    with held(src / "d003/f009"):
        proc = spawn("pass", "copy", "-w", "2", "--progress", "0", "--log-file", log, src,
                     tmp_path / "dst", state=state)
        wait_for(lambda: ran_for(2.5), 60, "the pass to run long enough for two lines at 1 s")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and b"progress:" not in err
    assert "progress:" not in log.read_text() and "copy done in" in log.read_text()


def test_a_resumed_pass_tells_this_run_from_the_pass_and_status_agrees(tmp_path: Path) -> None:
    src, dst, state = many_files(tmp_path / "src"), tmp_path / "dst", tmp_path / "state"
    log = tmp_path / "fsclone.log"
    with held(src / "d039/f059"):
        proc = spawn("pass", "copy", "-w", "2", "--log-file", log, src, dst, state=state)
        wait_for(lambda: any(r.counters.get(C.COPIED, 0) > 300 for r in list_passes(state)),
                 60, "progress")
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert re.search(r"Z fsclone: copy pass \S+ interrupted by SIGINT; run the same command "
                     r"again to resume \(or: fsclone pass resume \S+\)\n$", log.read_text())
    rc, summary = fsclone_json("pass", "copy", "-w", "2", "--log-file", log, src, dst,
                               state=state)
    assert rc == 0 and summary["status"] == DONE and summary["runs"] == 2
    run, whole = summary["run"], summary["counters"]
    assert 0 < run["elapsed"] < summary["elapsed"]
    assert 0 < run["counters"][C.COPIED] < whole[C.COPIED]
    assert_same_tree(src, dst)
    # the rate is over the run's exact time; ``elapsed`` is rounded to the ms
    assert run["rates"][C.COPIED] == pytest.approx(run["counters"][C.COPIED] / run["elapsed"],
                                                   rel=0.01 + 0.0005 / run["elapsed"])
    status = fsclone("status", summary["pass"], "--json", state=state)
    view = json.loads(status.stdout)
    assert view["elapsed"] == pytest.approx(summary["elapsed"], abs=0.002)
    assert view["runs"] == 2
    assert view["last_run"] == pytest.approx(run["elapsed"], abs=0.002)
    text = fsclone("status", state=state).stdout.decode()
    assert re.search(r"took [\d.]+s over 2 runs \(the last [\d.]+s\)", text), text
    assert '"runs": 2' in log.read_text()  # the --json summary went to the log as well


def test_the_summary_of_a_resumed_pass_gives_this_runs_time_and_rate(
        capsys: pytest.CaptureFixture[str]) -> None:
    console = Console(quiet=False, as_json=False, stream=io.StringIO())
    summary = Summary(DONE, {C.SCANNED: 1000, C.COPIED: 900}, elapsed=0.5, runs=2, active=9.3,
                      earlier={C.SCANNED: 900, C.COPIED: 800})
    console.summary("P", "copy", summary, dry_run=False)
    head, *rest = capsys.readouterr().out.splitlines()
    assert head == ("pass P: copy done in 0.5s this run (200 entries/s, 200 files/s, 0 B/s); "
                    "9.3s over its 2 runs, whose totals follow")
    assert "  files copied                     900" in rest
