"""Race fsclone against rsync -aHAX, cp -a (and dsync if installed) in one run; report ratios.

    python3 bench/run.py                      # all scenarios on /dev/shm, best of 3
    python3 bench/run.py --scale 0.1 --repeat 1 --where both --scenario small

See bench/README.md for what each scenario measures and the caveats.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import report
import trees
from tools import FSCLONE_VARIANTS, Run, Tool, fsclone_tools, launch, peers, remove, under_root
from tools import verify as rsync_verify

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
ROOTS = {"shm": Path("/dev/shm/fsclone-bench"), "disk": Path("/var/tmp/fsclone-bench")}
SCENARIOS = ("small", "large", "memory")
MAX_DIFF_LINES = 20
T = TypeVar("T")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass
class Ctx:
    """Everything one location's scenarios share."""

    where: str
    root: Path
    args: argparse.Namespace
    fsclone: list[Tool]
    peers: list[Tool]
    state_dirs: int = 0
    sections: list[dict[str, Any]] = field(default_factory=list)

    def scaled(self, n: int) -> int:
        return max(1, round(n * float(self.args.scale)))

    def target(self, tool: Tool) -> Path:
        return under_root(self.root / "work" / tool.name, self.root)

    def tree(self, name: str, make: Callable[[Path], None]) -> dict[str, Any]:
        return {"name": name, **trees.cached(self.root / "trees", name, make, log)}


def fresh_state(ctx: Ctx) -> Path:
    """A new, empty FSCLONE_STATE_DIR, so no run can reuse an earlier run's state."""
    ctx.state_dirs += 1
    state = under_root(ctx.root / "state" / f"run-{ctx.state_dirs}", ctx.root)
    remove(state, ctx.root)
    state.mkdir(parents=True)
    return state


def prepare_target(ctx: Ctx, tool: Tool) -> Path:
    """Fresh target: removed, then created empty unless the tool must create it itself."""
    dst = ctx.target(tool)
    remove(dst, ctx.root)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not tool.fresh_dst:
        dst.mkdir()
    return dst


def run_one(
    ctx: Ctx,
    tool: Tool,
    tree: dict[str, Any],
    phase: str,
    rep: int,
    check: bool,
    mem: bool = False,
) -> Run:
    """One timed run (copy onto a fresh target, or no-op re-run onto the done one).

    Dirty pages are flushed before the clock starts so one tool's writeback is not billed
    to the next; verification happens after the clock stops."""
    src = Path(tree["path"])
    dst = prepare_target(ctx, tool) if phase == "copy" else ctx.target(tool)
    env = dict(os.environ)
    state = fresh_state(ctx) if tool.fsclone else None
    if state:
        env["FSCLONE_STATE_DIR"] = str(state)
    os.sync()
    seconds, rc, err, peak = launch(tool.argv(src, dst), env, REPO, ctx.args.timeout, mem)
    if state:
        remove(state, ctx.root)
    run = Run(
        tool.name, phase, rep, tree["name"], seconds, rc, err, mem=vars(peak) if peak else None
    )
    if check and rc == 0:
        diff = rsync_verify(src, dst)
        run.faithful, run.diff = not diff, diff[:MAX_DIFF_LINES]
    log(
        f"{ctx.where} {tree['name']} {tool.name} {phase} rep {rep}: {seconds:.2f}s rc={rc}"
        f" faithful={run.faithful}" + (f" peak={peak.sum_rss >> 20}MiB" if peak else "")
    )
    return run


def rotated(tools: list[T], rep: int) -> list[T]:
    """Each repetition starts with a different tool, so none always runs first (or last)."""
    k = rep % len(tools)
    return tools[k:] + tools[:k]


def race(ctx: Ctx, tree: dict[str, Any], noop: bool) -> list[Run]:
    """--repeat rounds of: every tool copies; then (if noop) every incremental tool re-runs
    onto its own finished target. Verified on the first round, or every round if asked."""
    tools = ctx.fsclone + ctx.peers
    runs = []
    for rep in range(ctx.args.repeat):
        order = rotated(tools, rep)
        check = rep == 0 or ctx.args.verify_all
        runs += [run_one(ctx, t, tree, "copy", rep, check) for t in order]
        if noop:
            runs += [run_one(ctx, t, tree, "noop", rep, check) for t in order if t.incremental]
        for t in order:
            remove(ctx.target(t), ctx.root)
    return runs


def legend(tools: list[Tool]) -> str:
    return "tools: " + "; ".join(f"{t.name} = `{t.label}`" for t in tools)


def tree_line(tree: dict[str, Any]) -> str:
    return (
        f"tree `{tree['name']}`: {tree['inodes']:,} inodes, "
        f"{tree['bytes'] / (1 << 20):,.1f} MiB ({tree['path']})"
    )


def timed_section(ctx: Ctx, scenario: str, tree: dict[str, Any], noop: bool) -> dict[str, Any]:
    """Race, then tabulate and judge one timed scenario."""
    runs = race(ctx, tree, noop)
    summaries = report.summarize(runs)
    variants = [t.name for t in ctx.fsclone]
    verdicts = report.judge(scenario, summaries, variants, ctx.args.stat)
    lines = [
        tree_line(tree),
        legend(ctx.fsclone + ctx.peers),
        "",
        *report.time_table(summaries, variants[0], ctx.args.stat),
        "",
        *report.verdict_lines(verdicts),
    ]
    if len(ctx.args.build) > 1:
        names = [t.name for t in ctx.fsclone]
        lines += ["", *report.verdict_lines(report.build_verdicts(scenario, summaries, names,
                                                                   ctx.args.stat))]
    summary = report.summary_json(summaries, variants[0], ctx.args.stat)
    return {"trees": [tree], "runs": runs, "summary": summary, "verdicts": verdicts, "lines": lines}


def scenario_small(ctx: Ctx) -> dict[str, Any]:
    n = ctx.scaled(50_000)
    tree = ctx.tree(f"small-{n}", lambda root: trees.small_files(root, n))
    return timed_section(ctx, "small", tree, noop=True)


def scenario_large(ctx: Ctx) -> dict[str, Any]:
    size = ctx.scaled(256 * trees.MiB)
    tree = ctx.tree(f"large-4x{size}", lambda root: trees.large_files(root, 4, size))
    return timed_section(ctx, "large", tree, noop=False)


def scenario_memory(ctx: Ctx) -> dict[str, Any]:
    """Peak memory copying a small and a 10x bigger entries tree (fsclone, and rsync for
    context). Run once each: peak RSS does not drift the way seconds do."""
    names, sections, runs = [], [], []
    tools = ctx.fsclone + [t for t in ctx.peers if t.name == "rsync"]
    for n in (ctx.scaled(100_000), ctx.scaled(1_000_000)):
        tree = ctx.tree(f"entries-{n}", functools.partial(trees.entries, n=n))
        names.append(tree["name"])
        sections.append(tree)
        for tool in tools:
            runs.append(run_one(ctx, tool, tree, "copy", 0, check=True, mem=True))
            remove(ctx.target(tool), ctx.root)
    verdicts = report.memory_verdicts(runs, names[0], names[1], [t.name for t in ctx.fsclone])
    lines = [
        *(tree_line(t) for t in sections),
        legend(tools),
        "",
        *report.memory_table(runs),
        "",
        *report.memory_lines(verdicts),
    ]
    return {"trees": sections, "runs": runs, "verdicts": verdicts, "lines": lines}


RUNNERS: dict[str, Callable[[Ctx], dict[str, Any]]] = {
    "small": scenario_small,
    "large": scenario_large,
    "memory": scenario_memory,
}


def csv_choice(choices: tuple[str, ...] | list[str]) -> Callable[[str], list[str]]:
    """argparse type for a comma-separated subset of choices."""

    def parse(text: str) -> list[str]:
        items = [x.strip() for x in text.split(",") if x.strip()]
        bad = [x for x in items if x not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"choose from {','.join(choices)}; got {text!r}")
        return items

    return parse


def named_command(text: str) -> tuple[str, str]:
    """argparse type for NAME=CMD."""
    name, sep, cmd = text.partition("=")
    if not sep or not name or not cmd or not name.isidentifier():
        raise argparse.ArgumentTypeError(f"expected NAME=CMD with NAME a word; got {text!r}")
    return name, cmd


def builds(args: argparse.Namespace) -> list[tuple[str, str]]:
    """The fsclone builds raced: the --build ones, else the one --fsclone names."""
    return list(args.build) or [("", args.fsclone)]


def builds_text(args: argparse.Namespace) -> str:
    return ", ".join(f"{name or 'fsclone'}=`{cmd}`" for name, cmd in builds(args))


def default_fsclone() -> str:
    """fsclone's console script beside this interpreter (a pyenv-style shim on PATH would bill
    its own start-up to fsclone), else any on PATH, else the package run from this repo."""
    beside = Path(sys.executable).parent / "fsclone"
    if beside.exists():
        return shlex.quote(str(beside))
    return shutil.which("fsclone") or f"{shlex.quote(sys.executable)} -m fsclone"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--scenario",
        type=csv_choice(SCENARIOS),
        default=list(SCENARIOS),
        help="comma list of small,large,memory (default: all)",
    )
    p.add_argument(
        "--where",
        choices=("shm", "disk", "both"),
        default="shm",
        help="shm=/dev/shm/fsclone-bench, disk=/var/tmp/fsclone-bench",
    )
    p.add_argument("--repeat", type=int, default=3, help="rounds per timed scenario")
    p.add_argument(
        "--stat",
        choices=("best", "median"),
        default="best",
        help="which of the repeated times the ratios use",
    )
    p.add_argument("--scale", type=float, default=1.0, help="shrink (or grow) every tree")
    p.add_argument("--fsclone", default=default_fsclone(), help="command that runs fsclone")
    p.add_argument(
        "--build",
        action="append",
        type=named_command,
        default=[],
        metavar="NAME=CMD",
        help="an fsclone build to race (repeat: the first is the baseline the others are "
        "judged against, within REGRESSION); replaces --fsclone",
    )
    p.add_argument(
        "--variants",
        type=csv_choice(list(FSCLONE_VARIANTS)),
        default=["fsclone"],
        help=f"fsclone variants to race, from {','.join(FSCLONE_VARIANTS)}",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="fsclone workers and dsync ranks (default: usable cores)",
    )
    p.add_argument(
        "--verify-all", action="store_true", help="verify every repetition, not just the first"
    )
    p.add_argument("--timeout", type=float, default=3600, help="seconds before a run is killed")
    p.add_argument("--json", type=Path, help="results file (default: bench/results/<time>.json)")
    args = p.parse_args(argv)
    if args.repeat < 1 or args.scale <= 0 or args.workers < 1:
        p.error("--repeat and --workers must be >= 1, --scale > 0")
    return args


def header(args: argparse.Namespace, facts: dict[str, str], missing: list[str]) -> list[str]:
    cfg = (
        f"repeat={args.repeat} stat={args.stat} scale={args.scale} workers={args.workers} "
        f"fsclone={builds_text(args)} variants={','.join(args.variants)}"
    )
    return [
        f"# fsclone bench, {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
        "",
        *(f"- {k}: {v}" for k, v in facts.items()),
        *(f"- {name}: not installed" for name in missing),
        f"- config: {cfg}",
        "",
    ]


def run_location(where: str, args: argparse.Namespace, out: list[str]) -> list[dict[str, Any]]:
    """All chosen scenarios at one location; each section is printed as soon as it is done."""
    root = ROOTS[where]
    root.mkdir(parents=True, exist_ok=True)
    available = peers(args.workers)
    ctx = Ctx(
        where,
        root,
        args,
        [t for name, cmd in builds(args)
         for t in fsclone_tools(shlex.split(cmd), args.variants, args.workers, name)],
        [t for t in available.values() if t.installed()],
    )
    fs = report.fstype(root)
    results = []
    for scenario in args.scenario:
        section = RUNNERS[scenario](ctx)
        title = f"## {scenario} @ {where} ({root}, {fs})"
        emit(out, [title, "", *section.pop("lines"), ""])
        section["runs"] = [r.to_json() for r in section["runs"]]
        results.append(
            {"scenario": scenario, "location": where, "root": str(root), "fstype": fs, **section}
        )
    return results


def emit(out: list[str], lines: list[str]) -> None:
    out += lines
    print("\n".join(lines), flush=True)


def precompile() -> None:
    """Compile fsclone's bytecode once, as `pip install` does: an editable checkout in an
    environment with PYTHONDONTWRITEBYTECODE would otherwise recompile every module on every
    start and bill that to each timed run."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "fsclone")], check=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    precompile()
    facts = report.machine_facts(REPO)
    missing = [t.name for t in peers(args.workers).values() if not t.installed()]
    out: list[str] = []
    emit(out, header(args, facts, missing))
    wheres = ["shm", "disk"] if args.where == "both" else [args.where]
    results = [r for where in wheres for r in run_location(where, args, out)]
    doc = {
        "machine": facts,
        "config": {k: str(v) for k, v in vars(args).items()},
        "not_installed": missing,
        "results": results,
    }
    write_results(args.json or BENCH / "results" / time.strftime("bench-%Y%m%d-%H%M%S.json"),
                  doc, out)
    return 0


def write_results(path: Path, doc: dict[str, Any], out: list[str]) -> None:
    """The results as JSON at path, and the markdown report beside it (.md)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2))
    path.with_suffix(".md").write_text("\n".join(out) + "\n")
    log(f"wrote {path} and {path.with_suffix('.md')}")


if __name__ == "__main__":
    sys.exit(main())
