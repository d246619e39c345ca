"""Race `fsclone pass verify` against the tools one would check a copy with, in one run.

    python3 bench/verify_bench.py              # both scenarios on /dev/shm, best of 3

- hashing: 4 x 256 MiB files in two identical trees; fsclone verify of the pair against
  `xxhsum -H2` over both trees' files (the same bytes read). Target: fsclone's throughput is at
  least 0.8 x xxhsum's, i.e. xxhsum seconds / fsclone seconds >= 0.8.
- small: 50,000 files of 0-64 KiB (with hard links, symlinks, xattrs) in two identical trees;
  fsclone verify against `rsync -aHAXc -n` of the same pair. Target: fsclone is faster
  (rsync seconds / fsclone seconds > 1).

Tools take turns in a rotated order, each round; the ratios use the best of the rounds, since the
machine may be shared. Every run must succeed (exit 0: the trees are identical), or it does not
count. fsclone runs from this repository with a fresh state dir per run, and with Python's
bytecode cache allowed, as an installed fsclone would be.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import report
import trees
from tools import BENCH_ROOT_NAME, launch

from fsclone.state.queries import list_passes

REPO = Path(__file__).resolve().parent.parent
FSCLONE = "fsclone verify"

#: scenario → (tree maker, peer name, peer argv for SRC DST, target ratio, what the ratio says)
Peer = Callable[[Path, Path], list[str]]
SCENARIOS: dict[str, tuple[Callable[[Path], None], str, Peer, float, str]] = {
    "hashing": (
        lambda root: trees.large_files(root),
        "xxhsum -H2",
        lambda src, dst: ["xxhsum", "-H2", *map(str, sorted(src.iterdir())),
                          *map(str, sorted(dst.iterdir()))],
        0.8,
        "fsclone throughput / xxhsum throughput (xxhsum s / fsclone s)",
    ),
    "small": (
        lambda root: trees.small_files(root),
        "rsync -aHAXc -n",
        lambda src, dst: ["rsync", "-aHAXc", "-n", f"{src}/", f"{dst}/"],
        1.0,
        "rsync s / fsclone s (> 1: fsclone faster)",
    ),
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def pair(root: Path, name: str, make: Callable[[Path], None]) -> tuple[Path, Path]:
    """SRC and an identical DST (cp -a keeps owners, modes, times, links, xattrs), cached."""
    def make_pair(base: Path) -> None:
        make(base / "src")
        subprocess.run(["cp", "-a", str(base / "src"), str(base / "dst")], check=True)

    base = Path(str(trees.cached(root / "trees", f"verify-{name}", make_pair, log)["path"]))
    return base / "src", base / "dst"


@dataclass
class Race:
    """The timed runs of one scenario, and what they say."""

    scenario: str
    peer: str
    target: float
    meaning: str
    times: dict[str, list[float]] = field(default_factory=dict)
    #: fsclone's seconds from pass start to end (its record), without interpreter start-up
    in_pass: list[float] = field(default_factory=list)

    def best(self, tool: str) -> float | None:
        return min(self.times[tool], default=None)

    @property
    def in_pass_ratio(self) -> float | None:
        theirs = self.best(self.peer)
        return theirs / min(self.in_pass) if self.in_pass and theirs else None

    @property
    def ratio(self) -> float | None:
        mine, theirs = self.best(FSCLONE), self.best(self.peer)
        return theirs / mine if mine and theirs else None

    @property
    def verdict(self) -> str:
        return "PASS" if self.ratio is not None and self.ratio >= self.target else "FAIL"


def timed(argv: list[str], state: Path, timeout: float) -> tuple[float, Path] | None:
    """Seconds of one run and its state dir, None when it failed (a verify that finds
    differences fails). Each run gets a fresh state dir; the bytecode cache is allowed, as for
    an installed fsclone."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("FSCLONE_") and k != "PYTHONDONTWRITEBYTECODE"}
    env["FSCLONE_STATE_DIR"] = tempfile.mkdtemp(prefix="state-", dir=state)
    seconds, rc, err, _ = launch(argv, env, REPO, timeout, measure_mem=False)
    if rc != 0:
        log(f"run failed (rc={rc}): {' '.join(argv[:5])} ...: {err}")
        return None
    return seconds, Path(env["FSCLONE_STATE_DIR"])


def race(args: argparse.Namespace, scenario: str, state: Path) -> Race:
    make, peer, peer_argv, target, meaning = SCENARIOS[scenario]
    src, dst = pair(args.root, scenario, make)
    argv = {FSCLONE: [sys.executable, "-m", "fsclone", "pass", "verify", "-q", "--workers",
                      str(args.workers), str(src), str(dst)],
            peer: peer_argv(src, dst)}
    result = Race(scenario, peer, target, meaning, {name: [] for name in argv})
    names = list(argv)
    for name in names:  # warm-up, untimed: bytecode compiled, caches filled
        timed(argv[name], state, args.timeout)
    for rep in range(args.repeat):
        for name in names[rep % 2:] + names[:rep % 2]:
            run = timed(argv[name], state, args.timeout)
            if run is not None:
                result.times[name].append(run[0])
            if run is not None and name == FSCLONE:
                record = list_passes(run[1])[0]
                result.in_pass.append((record.ended or record.started) - record.started)
            log(f"{scenario} round {rep + 1}: {name}: {run and run[0]}")
    return result


def table(races: list[Race]) -> list[str]:
    lines = ["| scenario | tool | best s | all runs s |", "|---|---|---|---|"]
    for r in races:
        for name, runs in r.times.items():
            best = r.best(name)
            lines.append(f"| {r.scenario} | {name} | "
                         f"{'failed' if best is None else f'{best:.3f}'} | "
                         f"{', '.join(f'{s:.3f}' for s in runs)} |")
    lines.append("")
    for r in races:
        lines.append(f"- {r.verdict}: {r.scenario}: {r.meaning} = {_fmt(r.ratio)} "
                     f"(target >= {r.target})")
        lines.append(f"  - info: the same with fsclone's in-pass time (its pass record, without "
                     f"interpreter start-up, best {_fmt(min(r.in_pass, default=None))} s) = "
                     f"{_fmt(r.in_pass_ratio)}")
    return lines


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scenario", choices=list(SCENARIOS), action="append",
                   help="run only this scenario (repeatable; default: all)")
    p.add_argument("--repeat", type=int, default=3, help="timed rounds per scenario")
    p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--root", type=Path, default=Path("/dev/shm") / BENCH_ROOT_NAME,
                   help="where the cached trees live (a tmpfs: no disk in the measure)")
    p.add_argument("--timeout", type=float, default=1800)
    args = p.parse_args(argv)
    args.root.mkdir(parents=True, exist_ok=True)
    state = Path(tempfile.mkdtemp(prefix="verify-states-", dir=args.root))
    facts = report.machine_facts(REPO)
    facts["xxhsum"] = report._first_line(["xxhsum", "--version"])
    facts["cpu"] = next((line.split(":", 1)[1].strip() for line in
                         Path("/proc/cpuinfo").read_text().splitlines()
                         if line.startswith("model name")), "unknown")
    try:
        races = [race(args, s, state) for s in args.scenario or list(SCENARIOS)]
    finally:
        shutil.rmtree(state)
    print("\n".join([f"# fsclone verify bench, {time.strftime('%Y-%m-%d %H:%M:%S %Z')}", "",
                     *(f"- {k}: {v}" for k, v in facts.items()),
                     f"- workers: {args.workers}, rounds: {args.repeat}, trees in {args.root}",
                     "", *table(races)]))
    return 0 if all(r.verdict == "PASS" for r in races) else 1


if __name__ == "__main__":
    sys.exit(main())
