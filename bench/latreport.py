"""The latency bench's tables: times and ratios, requests per file per type from the faultfs
counters, and the physical floor of each case with how close each tool gets to it."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field, replace
from typing import Any

import report
from tools import Run

#: requests faultfs answers without the metadata delay (`delay meta`)
DATA = frozenset({"READ", "WRITE", "COPY_FILE_RANGE"})
#: sent when the kernel drops an inode; nobody waits for it, so it is left out of the totals
UNWAITED = frozenset({"FORGET"})
#: faultfs serves at most this many requests at once per mount (fuse_loop_cfg_set_max_threads)
MAX_IN_FLIGHT = 64

#: column order of the request tables; types not listed follow in name order
TYPE_ORDER = ("LOOKUP", "GETATTR", "SETATTR", "MKNOD", "MKDIR", "CREATE", "OPEN", "FLUSH",
              "RELEASE", "GETXATTR", "LISTXATTR", "SETXATTR", "REMOVEXATTR", "RENAME", "LINK",
              "UNLINK", "SYMLINK", "READLINK", "OPENDIR", "READDIR", "RELEASEDIR", "FSYNC",
              "READ", "WRITE")

Counts = dict[str, dict[str, float]]

# What the work of each kind of entry needs, per side, at the least: the model behind the
# floor. A file is copied faithfully and published atomically (no O_TMPFILE through FUSE: a
# temp name, renamed once), from a source whose listing (READDIRPLUS) left its dentries cached
# but its attributes stale. A new name costs a negative LOOKUP first (the kernel's, before
# CREATE and before RENAME onto an absent name); xattrs are listed on the source of a copy
# (GETXATTR only where there are any: ~0.2% of files, left out), but not for an unchanged
# file: a lower bound, which a comparison that lists xattrs exceeds by 2 LISTXATTR a file.
# Also left out: the GETATTR of a directory that the kernel's permission check (the mounts
# have default_permissions) sends when a name is looked up in it, as its attributes are never
# cached; attributes fetched within the same kernel tick count as fresh, so one serves the
# checks of many names in a row, and how many it serves depends on the timing.
NEW_FILE = {"source": {"GETATTR": 1, "OPEN": 1, "LISTXATTR": 1, "READ": 1, "FLUSH": 1,
                       "RELEASE": 1},
            "target": {"LOOKUP": 2, "CREATE": 1, "WRITE": 1, "SETATTR": 1, "FLUSH": 1,
                       "RELEASE": 1, "RENAME": 1}}
UNCHANGED_FILE = {"source": {"GETATTR": 1}, "target": {"GETATTR": 1}}
#: compared, then copied over the old one, whose name is known (one LOOKUP less)
MODIFIED_FILE = {"source": NEW_FILE["source"],
                 "target": {**NEW_FILE["target"], "LOOKUP": 1, "GETATTR": 1}}
DELETED_FILE = {"target": {"UNLINK": 1}}
#: a directory walked: opened, listed (a second READDIR meets its end), closed, stat-ed
LISTED_DIR = {"OPENDIR": 1, "READDIR": 2, "RELEASEDIR": 1, "GETATTR": 1}
NEW_DIR = {"LOOKUP": 1, "MKDIR": 1, "SETATTR": 1}


@dataclass
class LatRun(Run):
    """A timed run with what the two faultfs daemons saw: requests per side and type, and
    their CPU (user+system) over the run."""

    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    daemon_cpu: float = 0.0


def waited(counts: dict[str, int] | dict[str, float]) -> float:
    """Requests the caller waited for: all but FORGET."""
    return sum(v for k, v in counts.items() if k not in UNWAITED)


def meta(counts: dict[str, int] | dict[str, float]) -> float:
    """Requests that met the delay and were waited for."""
    return sum(v for k, v in counts.items() if k not in DATA | UNWAITED)


def meta_requests(counts: dict[str, dict[str, int]]) -> int:
    return round(sum(meta(side) for side in counts.values()))


def _add(total: Counts, needs: dict[str, dict[str, int]], times: float) -> None:
    for side, per_type in needs.items():
        for op, n in per_type.items():
            total.setdefault(side, {})
            total[side][op] = total[side].get(op, 0) + n * times


def needed(case: str, facts: dict[str, Any]) -> Counts:
    """The requests the work of a case needs at the least, per side and type (the model above)."""
    files, dirs = facts["files"], facts["dirs"]
    total: Counts = {"source": {}, "target": {}}
    if case == "copy":
        _add(total, NEW_FILE, files)
        _add(total, {"source": LISTED_DIR, "target": NEW_DIR}, dirs)
        return total
    _add(total, {"source": LISTED_DIR, "target": LISTED_DIR}, dirs)
    if case == "noop":
        _add(total, UNCHANGED_FILE, files)
        return total
    if case == "rewrite":
        _add(total, UNCHANGED_FILE, files - facts["rewritten"])
        _add(total, MODIFIED_FILE, facts["rewritten"])
        return total
    _add(total, UNCHANGED_FILE, files - facts["modified"] - facts["deleted"])
    _add(total, MODIFIED_FILE, facts["modified"])
    _add(total, NEW_FILE, facts["created"])
    _add(total, DELETED_FILE, facts["deleted"])
    return total


def median_counts(runs: list[LatRun]) -> Counts:
    """Per side and type, the median over the runs (absent = 0)."""
    out: Counts = {}
    for side in ("source", "target"):
        types = {op for r in runs for op in r.counts.get(side, {})}
        out[side] = {op: statistics.median(r.counts.get(side, {}).get(op, 0) for r in runs)
                     for op in types}
    return out


#: what a case's requests are counted per, and the fact that says how many of those there are
CASE_UNIT = {"copy": ("new file", "files"), "noop": ("unchanged file", "files"),
             "sync": ("file, 1% changed", "files"), "rewrite": ("changed file", "rewritten")}


def per_file(runs: list[LatRun], facts: dict[str, Any]) -> dict[tuple[str, str], Counts]:
    """Requests per file for every (tool, case) that succeeded: per new file (copy), per
    unchanged file (no-op), per file of the 1%-changed sync, and per changed file from the
    sync onto which every file (but the hard-linked ones) was changed. Directories and links
    are in the counts, spread over the files."""
    groups: dict[tuple[str, str], list[LatRun]] = {}
    for r in runs:
        if r.rc == 0:
            groups.setdefault((r.tool, r.phase), []).append(r)
    out: dict[tuple[str, str], Counts] = {}
    for (tool, case), group in groups.items():
        n = facts[CASE_UNIT[case][1]]
        out[tool, case] = {side: {op: v / n for op, v in c.items()}
                           for side, c in median_counts(group).items()}
    return out


#: a type gets a column of its own when some row has this many a file, else it goes to other
MINOR = 0.05


def _columns(tables: list[dict[str, float]]) -> list[str]:
    present = {op for t in tables for op, v in t.items() if v >= MINOR and op not in UNWAITED}
    return [op for op in TYPE_ORDER if op in present] + sorted(present - set(TYPE_ORDER))


def request_table(counts: dict[tuple[str, str], Counts]) -> list[str]:
    """Requests per file per type, one row per case, tool and side."""
    rows = [(case, tool, side, c) for (tool, case), sides in counts.items()
            for side, c in sides.items()]
    rows.sort(key=lambda r: list(CASE_UNIT).index(r[0]))
    cols = _columns([r[3] for r in rows])
    lines = [f"| per | tool | side | {' | '.join(cols)} | other | delayed, waited |",
             "|---|---|---|" + "---:|" * (len(cols) + 2)]
    for case, tool, side, c in rows:
        cells = " | ".join(_num(c.get(op, 0)) for op in cols)
        other = sum(v for op, v in c.items() if op not in cols and op not in UNWAITED)
        lines.append(f"| {CASE_UNIT[case][0]} | {tool} | {side} | {cells} | {_num(other)} "
                     f"| {_num(meta(c))} |")
    return lines


def _num(x: float) -> str:
    return "0" if abs(x) < 0.005 else f"{x:.2f}"


def cpu_per_request(runs: list[LatRun]) -> float | None:
    """Both daemons' CPU over all requests they served, across every successful run."""
    ok = [r for r in runs if r.rc == 0]
    requests = sum(waited(side) for r in ok for side in r.counts.values())
    return sum(r.daemon_cpu for r in ok) / requests if requests else None


def floors(case: str, facts: dict[str, Any], delay_us: int, cpu: float | None,
           cores: int) -> dict[str, Any]:
    """The case's floor: the needed delayed requests of the busier mount x latency / the
    requests a mount serves at once, and the needed requests of both x the daemons' CPU per
    request / the cores (which the daemons share with the tool); the floor is the larger."""
    need = needed(case, facts)
    latency = max(meta(per_type) for per_type in need.values()) * delay_us / 1e6 / MAX_IN_FLIGHT
    cpu_floor = None if cpu is None else sum(waited(t) for t in need.values()) * cpu / cores
    return {"case": case, "needed_meta": {s: round(meta(t)) for s, t in need.items()},
            "needed": {s: {op: round(n) for op, n in t.items()} for s, t in need.items()},
            "latency_floor": latency, "cpu_floor": cpu_floor,
            "floor": max(latency, cpu_floor or 0.0)}


def floor_lines(runs: list[LatRun], summaries: list[report.Summary], facts: dict[str, Any],
                delay_us: int, stat: str, cores: int) -> tuple[list[str], list[dict[str, Any]]]:
    """The floors of each case, and each tool's time against them; Little's law gives the
    delayed requests it kept in flight on average (its delayed requests x delay / time)."""
    cpu = cpu_per_request(runs)
    cases = list(dict.fromkeys(r.phase for r in runs))
    found = [floors(case, facts, delay_us, cpu, cores) for case in cases]
    cpu_text = "n/a" if cpu is None else f"{cpu * 1e6:.1f} µs"
    lines = [f"FUSE daemon CPU per request (both mounts, all runs): {cpu_text}; "
             f"{MAX_IN_FLIGHT} requests in flight per mount at most; {cores} cores.", "",
             "| case | needed delayed requests (source + target) | latency floor s "
             "| CPU floor s | floor s |", "|---|---:|---:|---:|---:|"]
    for f in found:
        lines.append(f"| {f['case']} | {f['needed_meta']['source']:,} + "
                     f"{f['needed_meta']['target']:,} | {f['latency_floor']:.2f} "
                     f"| {_fmt(f['cpu_floor'])} | {f['floor']:.2f} |")
    lines += ["", f"| case | tool | {stat} s | tool / floor | delayed requests per file "
              "| in flight (avg) |", "|---|---|---:|---:|---:|---:|"]
    for s in summaries:
        f = next((f for f in found if f["case"] == s.phase), None)
        group = [r for r in runs if r.tool == s.tool and r.phase == s.phase and r.rc == 0]
        seconds = s.value(stat)
        if f is None or not group or seconds is None:
            continue
        requests = statistics.median(meta_requests(r.counts) for r in group)
        in_flight = requests * delay_us / 1e6 / seconds
        per = requests / facts[CASE_UNIT[s.phase][1]]
        lines.append(f"| {s.phase} | {s.tool} | {seconds:.2f} | {seconds / f['floor']:.1f} "
                     f"| {per:.2f} | {in_flight:.1f} |")
    return lines, found


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def with_best(summaries: list[report.Summary], family: str, stat: str) -> list[report.Summary]:
    """summaries plus, per phase, a `family (best)` row: the best-configured of the family's
    tools (say fpsync-2 and fpsync-16) by the stat, among those that succeeded."""
    extra = []
    for phase in dict.fromkeys(s.phase for s in summaries):
        members = [s for s in summaries if s.phase == phase and s.tool.startswith(family + "-")
                   and s.value(stat) is not None]
        if len(members) > 1:
            best = min(members, key=lambda s: s.value(stat) or 0.0)
            extra.append(replace(best, tool=f"{family} (best: {best.tool})"))
    return summaries + extra


def tree_line(facts: dict[str, Any]) -> str:
    return (f"tree: {facts['files']:,} files (the small tree's shape) in {facts['dirs']} "
            f"directories, {facts['inodes']:,} inodes, {facts['bytes'] / report.MiB:,.1f} MiB; "
            f"the sync's change: {facts['modified']} modified, {facts['created']} created, "
            f"{facts['deleted']} deleted")


def section(runs: list[Any], facts: dict[str, Any], delay_us: int, stat: str,
            cores: int) -> dict[str, Any]:
    """Every table of one delay: times and ratios to fsclone's defaults, requests per file,
    floors."""
    summaries = report.summarize(runs)
    for family in ("fpsync", "dsync"):
        summaries = with_best(summaries, family, stat)
    counts = per_file(runs, facts)
    floor_text, found = floor_lines(runs, summaries, facts, delay_us, stat, cores)
    lines = [*report.time_table(summaries, "fsclone", stat), "",
             "Requests per file and type, from the faultfs counters (median of the rounds; "
             "directories and links included, spread over the files; a changed file's are "
             "those of a sync onto which every file without hard links was changed):", "",
             *request_table(counts), "", *floor_text]
    return {"summary": report.summary_json(summaries, "fsclone", stat),
            "requests_per_file": [{"tool": t, "case": c, "per": CASE_UNIT[c][0], "counts": v}
                                  for (t, c), v in counts.items()],
            "cpu_per_request": cpu_per_request(runs), "floors": found, "lines": lines}
