"""Turn runs into markdown tables, ratios and pass/fail lines against the project's targets.

Only ratios measured side by side in one run are judged: absolute seconds drift between
machines and hours, the ratio of two tools timed alternately on the same tree much less.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tools import Run

MiB = 1 << 20


@dataclass(frozen=True)
class Target:
    """fsclone's time for `phase` of `scenario` must be at most `limit` x the peer's."""

    scenario: str
    phase: str
    peer: str
    limit: float


TARGETS = (
    Target("small", "copy", "rsync", 0.5),
    Target("small", "copy", "cp", 1.0),
    Target("small", "noop", "rsync", 0.6),
    Target("large", "copy", "cp", 1.2),
)

#: a build raced against a baseline build (run.py --build) may be at most this x its time
REGRESSION = 1.05

#: peak RSS (summed over the process tree) for 1M entries must be <= this x that for 100k
MEMORY_LIMIT = 2.0


@dataclass
class Summary:
    """All runs of one tool in one phase on one tree."""

    tool: str
    phase: str
    times: list[float]
    failures: list[str]
    faithful: bool | None

    def value(self, stat: str) -> float | None:
        """best (min) or median seconds of the successful runs; None if there were none."""
        if not self.times:
            return None
        return min(self.times) if stat == "best" else statistics.median(self.times)

    def usable(self) -> bool:
        return bool(self.times) and not self.failures and self.faithful is not False


def summarize(runs: list[Run]) -> list[Summary]:
    """Group runs by (tool, phase), keeping first-seen order."""
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.tool, run.phase), []).append(run)
    return [_summary(tool, phase, group) for (tool, phase), group in groups.items()]


def _summary(tool: str, phase: str, runs: list[Run]) -> Summary:
    checked = [r.faithful for r in runs if r.faithful is not None]
    failures = [f"rep {r.rep}: rc={r.rc} {r.error}".strip() for r in runs if r.rc != 0]
    return Summary(
        tool=tool,
        phase=phase,
        times=[r.seconds for r in runs if r.rc == 0],
        failures=failures,
        faithful=all(checked) if checked else None,
    )


def _fmt(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _faithful(s: Summary) -> str:
    return {True: "yes", False: "**NO**", None: "not checked"}[s.faithful]


def _find(summaries: list[Summary], tool: str, phase: str) -> Summary | None:
    return next((s for s in summaries if s.tool == tool and s.phase == phase), None)


def ratio(a: Summary | None, b: Summary | None, stat: str) -> float | None:
    """a's time over b's, when both completed faithfully."""
    if a is None or b is None or not a.usable() or not b.usable():
        return None
    va, vb = a.value(stat), b.value(stat)
    return None if va is None or vb is None or vb == 0 else va / vb


def time_table(summaries: list[Summary], main: str, stat: str) -> list[str]:
    """One markdown row per (tool, phase), with the ratio of `main` (fsclone) to that row."""
    lines = [
        f"| tool | phase | best s | median s | ok runs | faithful | {main} / tool ({stat}) |",
        "|---|---|---:|---:|---:|---|---:|",
    ]
    for s in summaries:
        r = ratio(_find(summaries, main, s.phase), s, stat)
        best, median = s.value("best"), s.value("median")
        ok = f"{len(s.times)}/{len(s.times) + len(s.failures)}"
        lines.append(
            f"| {s.tool} | {s.phase} | {_fmt(best)} | {_fmt(median)} | {ok} "
            f"| {_faithful(s)} | {_fmt(r)} |"
        )
    return lines + [f"- {s.tool} {s.phase} failed: {f}" for s in summaries for f in s.failures]


def summary_json(summaries: list[Summary], main: str, stat: str) -> list[dict[str, Any]]:
    """The table's numbers, for machines: per (tool, phase) best, median and ratio."""
    return [
        {
            "tool": s.tool,
            "phase": s.phase,
            "best": s.value("best"),
            "median": s.value("median"),
            "ok_runs": len(s.times),
            "failures": s.failures,
            "faithful": s.faithful,
            f"{main}_over_tool": ratio(_find(summaries, main, s.phase), s, stat),
        }
        for s in summaries
    ]


def judge(
    scenario: str, summaries: list[Summary], variants: list[str], stat: str
) -> list[dict[str, Any]]:
    """Pass/fail of every fsclone variant against every target of this scenario."""
    verdicts = []
    for t in (t for t in TARGETS if t.scenario == scenario):
        peer = _find(summaries, t.peer, t.phase)
        for v in variants:
            mine = _find(summaries, v, t.phase)
            r = ratio(mine, peer, stat)
            verdict = _verdict(r, t.limit, mine, peer)
            verdicts.append(
                {
                    "what": f"{scenario} {t.phase}: {v} / {t.peer}",
                    "ratio": r,
                    "limit": t.limit,
                    "verdict": verdict,
                }
            )
    return verdicts


def build_verdicts(
    scenario: str, summaries: list[Summary], builds: list[str], stat: str
) -> list[dict[str, Any]]:
    """Every build's time over the first build's (the baseline), per phase: the check that a
    change does not slow fsclone down, measured side by side in one run."""
    verdicts = []
    phases = dict.fromkeys(s.phase for s in summaries)
    for phase in phases:
        base = _find(summaries, builds[0], phase)
        for build in builds[1:]:
            mine = _find(summaries, build, phase)
            if base is None or mine is None:
                continue
            r = ratio(mine, base, stat)
            verdicts.append(
                {
                    "what": f"{scenario} {phase}: {build} / {builds[0]}",
                    "ratio": r,
                    "limit": REGRESSION,
                    "verdict": _verdict(r, REGRESSION, mine, base),
                }
            )
    return verdicts


def _verdict(r: float | None, limit: float, mine: Summary | None, peer: Summary | None) -> str:
    """PASS/FAIL, or why neither can be said; an unfaithful or failed fsclone is a FAIL."""
    if mine is None or not mine.usable():
        return "FAIL (fsclone failed or was not faithful)"
    if peer is None or not peer.usable():
        return "SKIP (peer not run, failed or not faithful)"
    return "PASS" if r is not None and r <= limit else "FAIL"


def verdict_lines(verdicts: list[dict[str, Any]]) -> list[str]:
    return [
        f"- {v['verdict'].split()[0]}: {v['what']} = {_fmt(v['ratio'])} "
        f"(target <= {v['limit']}){_why(v['verdict'])}"
        for v in verdicts
    ]


def _why(verdict: str) -> str:
    return "" if " " not in verdict else " — " + verdict.split(" ", 1)[1].strip("()")


def memory_table(runs: list[Run]) -> list[str]:
    """Peak memory per tool and tree: summed over the process tree, and the largest process."""
    lines = [
        "| tool | tree | seconds | peak sum RSS MiB | max single-process MiB | max procs "
        "| faithful |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for r in runs:
        mem = r.mem or {}
        faithful = {True: "yes", False: "**NO**", None: "not checked"}[r.faithful]
        status = _fmt(r.seconds) if r.rc == 0 else f"failed rc={r.rc}"
        lines.append(
            f"| {r.tool} | {r.tree} | {status} | {_fmt(mem.get('sum_rss', 0) / MiB, 1)} "
            f"| {_fmt(mem.get('max_single', 0) / MiB, 1)} | {mem.get('max_procs', 0)} "
            f"| {faithful} |"
        )
    return lines


def memory_verdicts(
    runs: list[Run], small: str, big: str, variants: list[str]
) -> list[dict[str, Any]]:
    """Growth of peak memory from the small to the big entries tree, per tool."""
    verdicts = []
    for tool in dict.fromkeys(r.tool for r in runs):
        a = next((r for r in runs if r.tool == tool and r.tree == small), None)
        b = next((r for r in runs if r.tool == tool and r.tree == big), None)
        for key in ("sum_rss", "max_single"):
            r = _mem_ratio(a, b, key)
            judged = tool in variants and key == "sum_rss"
            verdict = _mem_verdict(r) if judged else "info"
            verdicts.append(
                {
                    "what": f"memory {tool} {big}/{small} ({key})",
                    "ratio": r,
                    "limit": MEMORY_LIMIT,
                    "verdict": verdict,
                }
            )
    return verdicts


def _mem_ratio(a: Run | None, b: Run | None, key: str) -> float | None:
    if a is None or b is None or not a.ok() or not b.ok() or not a.mem or not b.mem:
        return None
    return b.mem[key] / a.mem[key] if a.mem[key] else None


def _mem_verdict(r: float | None) -> str:
    if r is None:
        return "FAIL (a run failed or was not faithful)"
    return "PASS" if r <= MEMORY_LIMIT else "FAIL"


def memory_lines(verdicts: list[dict[str, Any]]) -> list[str]:
    """Judged lines as PASS/FAIL; the rest (peers, single-process) as plain context."""
    out = []
    for v in verdicts:
        if v["verdict"] == "info":
            out.append(f"- info: {v['what']} = {_fmt(v['ratio'])}")
        else:
            out.extend(verdict_lines([v]))
    return out


def _first_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else f"rc={out.returncode}"


def fstype(path: Path) -> str:
    return _first_line(["findmnt", "-n", "-o", "FSTYPE", "-T", str(path)])


def machine_facts(repo: Path) -> dict[str, str]:
    """What a reader needs to judge whether two reports are comparable at all."""
    mem_kib = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    return {
        "nproc": str(os.cpu_count()),
        "usable cpus": str(len(os.sched_getaffinity(0))),
        "RAM": f"{mem_kib / (1 << 20):.1f} GiB",
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "rsync": _first_line(["rsync", "--version"]),
        "cp": _first_line(["cp", "--version"]),
        "fsclone commit": _first_line(["git", "-C", str(repo), "describe", "--always", "--dirty"]),
    }
