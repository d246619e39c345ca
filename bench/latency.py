"""Race fsclone and its peers where every metadata request is a round trip: source and target
each on its own faultfs mount that delays every metadata request, as a cold client of a network
or parallel filesystem sees it. Reports times, ratios, requests per file and the floors.

    python3 bench/latency.py                          # 10,000 files at 200 µs and 1 ms
    python3 bench/latency.py --delays 200,1000:2000   # 2,000 files at 1 ms
    python3 bench/latency.py --files 50 --delays 50 --repeat 1 --tools fsclone,rsync

See bench/README.md ("Latency") for what is measured and how the floors are reckoned.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import latreport
import report
import trees
from run import csv_choice, default_fsclone, emit, log, precompile, rotated, write_results
from tools import Run, Tool, launch, remove, under_root, verify

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from faultfs import FaultFS  # from the repository root, beside fsclone

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
DEFAULT_ROOT = Path("/dev/shm/fsclone-bench")
PHASES = ("copy", "noop", "sync", "rewrite")
#: the cases run as a migration's final pass (which deletes); copy and noop run the copy
FINAL_PHASES = ("sync", "rewrite")
TOOLS = ("fsclone", "fsclone-w16", "rsync", "cp", "fpsync-2", "fpsync-16", "dsync-2", "dsync-16")

#: the kernel's cache lifetimes on both mounts: dentries kept (a name once looked up or listed
#: is not looked up again), attributes not (every stat is a GETATTR): a cold client
ENTRY_TIMEOUT = 3600.0
ATTR_TIMEOUT = 0.0

#: bump when the latency trees change (their cache is this script's alone)
TREES_VERSION = 2

#: how long after a tool exits its last asynchronous requests (RELEASE) may still arrive
SETTLE_TIMEOUT = 5.0


@dataclass(frozen=True)
class Contender:
    """One row of the table: the Tool it runs in each phase it takes part in."""

    name: str
    phases: dict[str, Tool]


def fsclone_contender(name: str, cmd: list[str], opts: list[str]) -> Contender:
    def tool(subcommand: str) -> Tool:
        argv = [*cmd, "pass", subcommand, "-q", *opts]
        return Tool(name, " ".join(argv), lambda s, d: [*argv, str(s), str(d)], cmd[0],
                    fsclone=True)

    return Contender(name, {"copy": tool("copy"), "noop": tool("copy"),
                            **dict.fromkeys(FINAL_PHASES, tool("sync"))})


def rsync_contender() -> Contender:
    def tool(*extra: str) -> Tool:
        argv = ["rsync", "-aHAX", *extra]
        return Tool("rsync", " ".join(argv), lambda s, d: [*argv, f"{s}/", f"{d}/"], "rsync")

    return Contender("rsync", {"copy": tool(), "noop": tool(),
                               **dict.fromkeys(FINAL_PHASES, tool("--delete"))})


def cp_contender() -> Contender:
    tool = Tool("cp", "cp -a", lambda s, d: ["cp", "-a", str(s), str(d)], "cp", fresh_dst=True,
                incremental=False)
    return Contender("cp", {"copy": tool})


def fpsync_contender(jobs: int, files: int, tmp: Path) -> Contender:
    """fpsync's rsync jobs with -aHAX's metadata; about four jobs per concurrent slot, so the
    last job does not run alone (fpsync's default of 2,000 files per job would give a 10,000
    file tree five jobs whatever -n says). Its sync is directory mode (-E), which deletes."""
    per_job = max(1, math.ceil(files / (4 * jobs)))

    def tool(*extra: str) -> Tool:
        argv = ["fpsync", "-n", str(jobs), "-f", str(per_job), "-t", str(tmp), *extra,
                "-o", "-lptgoDHAX --numeric-ids"]
        return Tool(f"fpsync-{jobs}", shlex.join(argv), lambda s, d: [*argv, f"{s}/", f"{d}/"],
                    "fpsync")

    return Contender(f"fpsync-{jobs}", {"copy": tool(), "noop": tool(),
                                        **dict.fromkeys(FINAL_PHASES, tool("-E"))})


def dsync_contender(ranks: int) -> Contender:
    def tool(*extra: str) -> Tool:
        argv = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", str(ranks), "dsync",
                *extra]
        return Tool(f"dsync-{ranks}", " ".join(argv), lambda s, d: [*argv, str(s), str(d)],
                    "dsync")

    return Contender(f"dsync-{ranks}", {"copy": tool(), "noop": tool(),
                                        **dict.fromkeys(FINAL_PHASES, tool("--delete"))})


def contenders(args: argparse.Namespace, files: int, tmp: Path) -> list[Contender]:
    """The chosen tools, fsclone with its defaults first (the ratios' baseline)."""
    cmd = shlex.split(args.fsclone)
    made: dict[str, Callable[[], Contender]] = {
        "fsclone": lambda: fsclone_contender("fsclone", cmd, []),
        "fsclone-w16": lambda: fsclone_contender("fsclone-w16", cmd, ["-w", "16"]),
        "rsync": rsync_contender,
        "cp": cp_contender,
        "fpsync-2": lambda: fpsync_contender(2, files, tmp),
        "fpsync-16": lambda: fpsync_contender(16, files, tmp),
        "dsync-2": lambda: dsync_contender(2),
        "dsync-16": lambda: dsync_contender(16),
    }
    return [made[name]() for name in TOOLS if name in args.tools]


# --- the two mounts -----------------------------------------------------------------------


@dataclass
class Layout:
    """Where the backings and mounts live, all under one bench root."""

    root: Path

    def path(self, name: str) -> Path:
        return under_root(self.root / "latency" / name, self.root)

    @property
    def src_backing(self) -> Path:
        return self.path("src.backing")

    @property
    def dst_backing(self) -> Path:
        return self.path("dst.backing")


@dataclass
class Measured:
    """What the two daemons saw during one run."""

    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    daemon_cpu: float = 0.0


@contextlib.contextmanager
def mounted(layout: Layout, delay_us: int) -> Iterator[tuple[Path, Path, Measured]]:
    """A fresh pair of mounts for one run (a cold client: nothing cached from the run before),
    their counters zeroed; on leaving, the requests each served and both daemons' CPU."""
    mounts = {}
    with contextlib.ExitStack() as stack:
        for side, backing in (("source", layout.src_backing), ("target", layout.dst_backing)):
            mountpoint = layout.path(side)
            backing.mkdir(parents=True, exist_ok=True)
            mountpoint.mkdir(parents=True, exist_ok=True)
            fs = stack.enter_context(FaultFS(backing, mountpoint, entry_timeout=ENTRY_TIMEOUT,
                                             attr_timeout=ATTR_TIMEOUT))
            fs.delay("meta", delay_us)
            mounts[side] = fs
        measured = Measured()
        cpu0 = {side: fs.cpu_seconds() for side, fs in mounts.items()}
        for fs in mounts.values():
            fs.reset()
        yield mounts["source"].mountpoint, mounts["target"].mountpoint, measured
        for side, fs in mounts.items():
            measured.counts[side] = settled_counters(fs, delay_us)
            measured.daemon_cpu += fs.cpu_seconds() - cpu0[side]


def settled_counters(fs: FaultFS, delay_us: int) -> dict[str, int]:
    """The counters once the requests the kernel sends after a tool has gone (RELEASE of the
    files it closed last) are in: two reads a while apart that agree."""
    interval = max(0.05, 20 * delay_us / 1e6)
    deadline = time.monotonic() + SETTLE_TIMEOUT
    last = fs.counters()
    while time.monotonic() < deadline:
        time.sleep(interval)
        now = fs.counters()
        if now == last:
            break
        last = now
    return {k: v for k, v in last.items() if not k.startswith("injected") and v}


# --- one run ------------------------------------------------------------------------------


@dataclass
class Ctx:
    """One delay's runs: the layout, the trees, the chosen contenders."""

    layout: Layout
    args: argparse.Namespace
    delay_us: int
    contenders: list[Contender]
    sources: dict[str, Path]
    state_dirs: int = 0

    @property
    def root(self) -> Path:
        return self.layout.root


def run_one(ctx: Ctx, contender: Contender, phase: str, rep: int) -> Run:
    """One timed run of one contender in one phase, over a fresh pair of mounts; verified on
    the backings (no delay) after the clock stopped, on the first round or every round."""
    tool = contender.phases[phase]
    tree = ctx.sources[phase]
    rel = Path(tree).relative_to(ctx.layout.src_backing)
    dst_backing = ctx.layout.dst_backing / contender.name
    if phase == "copy":
        remove(dst_backing, ctx.root)
        dst_backing.parent.mkdir(parents=True, exist_ok=True)
        if not tool.fresh_dst:
            dst_backing.mkdir()
    env = dict(os.environ)
    state = ctx.layout.path(f"state-{os.getpid()}-{ctx.state_dirs}")
    ctx.state_dirs += 1
    if tool.fsclone:
        remove(state, ctx.root)
        state.mkdir(parents=True)
        env["FSCLONE_STATE_DIR"] = str(state)
    os.sync()
    with mounted(ctx.layout, ctx.delay_us) as (src_mount, dst_mount, measured):
        argv = tool.argv(src_mount / rel, dst_mount / contender.name)
        seconds, rc, err, _ = launch(argv, env, REPO, ctx.args.timeout, False)
    remove(state, ctx.root)
    remove(ctx.layout.path("fpsync-tmp"), ctx.root)
    run = Run(contender.name, phase, rep, rel.name, seconds, rc, err)
    if rc == 0 and (rep == 0 or ctx.args.verify_all):
        diff = verify(Path(tree), dst_backing)
        run.faithful, run.diff = not diff, diff[:20]
    meta = latreport.meta_requests(measured.counts)
    log(f"{ctx.delay_us}us {contender.name} {phase} rep {rep}: {seconds:.2f}s rc={rc} "
        f"faithful={run.faithful} meta requests={meta} daemon cpu={measured.daemon_cpu:.2f}s"
        + (f"\n{err}" if rc else ""))
    return latreport.LatRun(**vars(run), counts=measured.counts,
                            daemon_cpu=measured.daemon_cpu)


def race(ctx: Ctx) -> list[Run]:
    """--repeat rounds; in each, every contender (in a rotated order) copies onto a fresh
    target, re-runs the copy with nothing to do, syncs the 1%-changed tree onto that
    target (the final pass, which deletes), and (first round only: it is there for its
    request counts) syncs again with every file changed."""
    runs: list[Run] = []
    for rep in range(ctx.args.repeat):
        for contender in rotated(ctx.contenders, rep):
            runs += [run_one(ctx, contender, phase, rep) for phase in PHASES
                     if phase in contender.phases and phase in ctx.args.cases
                     and (phase != "rewrite" or rep == 0)]
            remove(ctx.layout.dst_backing / contender.name, ctx.root)
    return runs


# --- the trees ----------------------------------------------------------------------------


def make_sources(layout: Layout, files: int, change: float) -> tuple[dict[str, Path],
                                                                      dict[str, Any]]:
    """The source trees of the cases in the source backing (cached): the small-files tree,
    a copy with `change` of it changed, and a copy of that with every file rewritten; and the
    facts the per-file counts and floors need (files, directories, what each change did)."""
    cache = layout.src_backing / f"trees.v{TREES_VERSION}"
    name = f"small-{files}"
    counts = trees.change_counts(files, change)
    tree = trees.cached(cache, name, lambda root: trees.small_files(root, files), log)
    base = Path(str(tree["path"]))
    changed = Path(str(trees.cached(
        cache, f"{name}-changed-{change:g}",
        lambda root: trees.changed(base, root, counts, trees.BASE_MTIME + 2 * files), log)["path"]))
    every = {"modified": files * 2, "deleted": 0, "created": 0}  # more than there are: all
    rewritten = Path(str(trees.cached(
        cache, f"{name}-rewritten",
        lambda root: trees.changed(changed, root, every, trees.BASE_MTIME + 4 * files),
        log)["path"]))
    facts = {"files": files, "dirs": sum(1 for _ in os.walk(base)), "inodes": tree["inodes"],
             "bytes": tree["bytes"], **counts, "rewritten": trees.unlinked_files(changed)}
    sources = {"copy": base, "noop": base, "sync": changed, "rewrite": rewritten}
    return sources, facts


# --- the report ---------------------------------------------------------------------------


def delays(text: str) -> list[tuple[int, int | None]]:
    """argparse type for USEC[:FILES],...: the delays, each with its tree size if given."""
    out = []
    for item in text.split(","):
        usec, _, files = item.partition(":")
        try:
            out.append((int(usec), int(files) if files else None))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected USEC[:FILES],...; got {text!r}") from None
        if out[-1][0] < 0 or (out[-1][1] or 1) < 1:
            raise argparse.ArgumentTypeError(f"delays >= 0 and files >= 1; got {text!r}")
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--files", type=int, default=10_000, help="files in the tree (default 10000)")
    p.add_argument("--delays", type=delays, default="200,1000",
                   help="comma list of µs added to every metadata request, each USEC or "
                   "USEC:FILES for a tree of its own size (default 200,1000)")
    p.add_argument("--change", type=float, default=0.01,
                   help="share of files the sync case changes (default 0.01)")
    p.add_argument("--tools", type=csv_choice(TOOLS), default=list(TOOLS),
                   help=f"comma list from {','.join(TOOLS)} (default: all installed)")
    p.add_argument("--cases", type=csv_choice(PHASES), default=list(PHASES),
                   help="comma list of copy,noop,sync,rewrite (default: all)")
    p.add_argument("--repeat", type=int, default=3, help="rounds (default 3)")
    p.add_argument("--stat", choices=("best", "median"), default="median",
                   help="which of the repeated times the ratios use (default median)")
    p.add_argument("--fsclone", default=default_fsclone(), help="command that runs fsclone")
    p.add_argument("--root", type=Path, default=DEFAULT_ROOT,
                   help="bench root, a directory named fsclone-bench (default /dev/shm/...)")
    p.add_argument("--verify-all", action="store_true", help="verify every round, not the first")
    p.add_argument("--timeout", type=float, default=3600, help="seconds before a run is killed")
    p.add_argument("--json", type=Path,
                   help="results file (default bench/results/latency-<time>.json; .md beside)")
    args = p.parse_args(argv)
    if args.repeat < 1 or args.files < 1 or not 0 < args.change < 1:
        p.error("--repeat and --files must be >= 1, 0 < --change < 1")
    args.delays = [(usec, files or args.files) for usec, files in args.delays]
    if "copy" not in args.cases or ("rewrite" in args.cases and "sync" not in args.cases):
        p.error("--cases: the others run on the copy's target, rewrite on the sync's")
    return args


def skipped_tools(args: argparse.Namespace) -> list[str]:
    """Chosen tools whose binary is missing, each with the line the report prints."""
    lines = []
    for name, binary, why in (("fpsync", "fpsync", "Debian: fpart"),
                              ("dsync", "dsync", "mpiFileUtils, not packaged in Debian 12")):
        chosen = [t for t in args.tools if t.startswith(name + "-")]
        if chosen and shutil.which(binary) is None:
            args.tools = [t for t in args.tools if t not in chosen]
            lines.append(f"- {name}: not installed ({why}); skipped")
    return lines


def run_delay(args: argparse.Namespace, layout: Layout, delay_us: int, files: int,
              out: list[str]) -> dict[str, Any]:
    sources, facts = make_sources(layout, files, args.change)
    ctx = Ctx(layout, args, delay_us, contenders(args, files, layout.path("fpsync-tmp")), sources)
    runs = race(ctx)
    section = latreport.section(runs, facts, delay_us, args.stat,
                                len(os.sched_getaffinity(0)))
    legend = "; ".join(f"{c.name} = `{c.phases['copy'].label}`"
                       + (f", then `{c.phases['sync'].label}`" if "sync" in c.phases else "")
                       for c in ctx.contenders)
    emit(out, [f"## {delay_us} µs per metadata request, {files:,} files", "",
               latreport.tree_line(facts), f"tools: {legend}", "", *section.pop("lines"), ""])
    return {"delay_us": delay_us, "facts": facts, **section,
            "runs": [r.to_json() for r in runs]}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    precompile()
    layout = Layout(args.root)
    facts = report.machine_facts(REPO)
    out: list[str] = []
    skipped = skipped_tools(args)
    emit(out, [f"# fsclone latency bench, {time.strftime('%Y-%m-%d %H:%M:%S %Z')}", "",
               *(f"- {k}: {v}" for k, v in facts.items()), *skipped,
               f"- config: delays (µs, files)={args.delays} change={args.change} "
               f"repeat={args.repeat} stat={args.stat} fsclone=`{args.fsclone}` "
               f"entry_timeout={ENTRY_TIMEOUT:g} attr_timeout={ATTR_TIMEOUT:g}", ""])
    path = args.json or BENCH / "results" / time.strftime("latency-%Y%m%d-%H%M%S.json")
    doc = {"machine": facts, "config": {k: str(v) for k, v in vars(args).items()},
           "skipped": skipped, "results": []}
    for usec, files in args.delays:  # written after each delay: an hour's run is not all lost
        doc["results"].append(run_delay(args, layout, usec, files, out))
        write_results(path, doc, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
