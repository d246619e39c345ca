"""Race `fsclone pass sync --changes` against a full `fsclone pass sync` and `rsync -aHAX
--delete`, after the same small change to a big tree, in one run.

    PYTHONPATH=. python3 bench/changes_bench.py                   # 1,000,000 entries, 3 rounds
    PYTHONPATH=. python3 bench/changes_bench.py --entries 200000  # smaller, a shared machine
    PYTHONPATH=. python3 bench/changes_bench.py --root /mnt/xfs/b --cold  # on disk, cold
    PYTHONPATH=. python3 bench/changes_bench.py --delay 200 --entries 4000  # round trips

The tree: ``--entries`` empty files (1% hold a few bytes) in directories of 1,000
(bench/trees.py ``entries``), and three copies: ``--root`` needs four times its inodes (a
tmpfs of its own, ``-o nr_inodes=5m``, for a million entries). Each round changes 1% of its
files, across 1% of its directories (every file of those: a third rewritten, a third
chmod-ed, a third renamed), then brings three targets, each faithful to the tree before the
change, up to date, taking turns in a rotated order: `pass sync --changes` (the dirty
directories recorded in the pair's pending store, as a watcher records them: this process
holds the pair's lock for the run, a watcher's stand-in), a full `pass sync`, and
`rsync -aHAX --delete`. Every run must succeed, and every target ends faithful by rsync's
checksummed judgement (checked after the first round, or every round with ``--verify-all``).
Targets: the full sync takes at least 20 x and rsync at least 50 x the time of `--changes`
(best of the rounds); the same ratios with fsclone's in-pass time (its record, without
interpreter start-up) are reported too.

``--cold`` drops the kernel's caches before every timed run, for every tool alike: a final
pass after days of use finds a tree of 10^9 entries on disk, not in RAM, which is what makes a
walk cost hours. Run it on a disk filesystem (a loop-mounted XFS image on the machine's disk);
on a tmpfs there is nothing to drop, and every run is the CPU-bound best case of a walk.

``--delay US`` puts the four trees on one faultfs mount (faultfs/) that delays every metadata
request by US µs, as on a network or parallel filesystem whose every request is a round trip.
The daemon keeps a descriptor open for each entry it was asked about, so the four trees must
fit in its limit of open files (``ulimit -n``): a few thousand entries, whose one dirty
directory is the hot directory of a watcher, not 1% of a big tree.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import report
import trees
from tools import BENCH_ROOT_NAME, drop_caches, launch, remove, verify

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from faultfs import FaultFS  # from the repository root, beside fsclone
from fsclone.changes.feed import DirtyDir
from fsclone.state.changes import ChangeStore
from fsclone.state.directory import open_state_dir
from fsclone.state.queries import list_passes

REPO = Path(__file__).resolve().parent.parent
CHANGES, FULL, RSYNC = "pass sync --changes", "pass sync", "rsync -aHAX --delete"
#: the full sync and rsync, each at least this x the time of --changes
TARGETS = {FULL: 20.0, RSYNC: 50.0}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass
class Race:
    times: dict[str, list[float]] = field(default_factory=dict)
    in_pass: dict[str, list[float]] = field(default_factory=dict)
    unfaithful: list[str] = field(default_factory=list)

    def best(self, tool: str, in_pass: bool = False) -> float | None:
        return min((self.in_pass if in_pass else self.times).get(tool, []), default=None)

    def ratio(self, peer: str, in_pass: bool = False) -> float | None:
        mine = self.best(CHANGES, in_pass)
        theirs = self.best(peer, in_pass and peer == FULL)
        return theirs / mine if mine and theirs else None


def change(src: Path, dirs: list[str], rnd: int) -> list[DirtyDir]:
    """Round ``rnd``'s change to the files of ``dirs``; returns the dirty directories a feed
    would report (each directory changed; none is new)."""
    mtime = trees.BASE_MTIME + 86400 * (rnd + 1)
    for d in dirs:
        fd = os.open(src / d, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for i, name in enumerate(sorted(os.listdir(fd))):
                if i % 3 == 0:
                    with open(os.open(name, os.O_WRONLY | os.O_TRUNC, dir_fd=fd), "wb") as f:
                        f.write(b"round %d\n" % rnd * (1 + i % 7))
                    os.utime(name, (mtime, mtime), dir_fd=fd)
                elif i % 3 == 1:
                    os.chmod(name, 0o600 if rnd % 2 == 0 else 0o644, dir_fd=fd)
                else:
                    new = name[:-2] if name.endswith(".r") else name + ".r"
                    os.rename(name, new, src_dir_fd=fd, dst_dir_fd=fd)
        finally:
            os.close(fd)
    return [DirtyDir(os.fsencode(d), False) for d in dirs]


def timed(argv: list[str], state: Path, timeout: float) -> tuple[float, float | None]:
    """Seconds of one run, and for fsclone its in-pass seconds (from its newest record)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("FSCLONE_") and k != "PYTHONDONTWRITEBYTECODE"}
    env["FSCLONE_STATE_DIR"] = str(state)
    seconds, rc, err, _ = launch(argv, env, REPO, timeout, measure_mem=False)
    if rc != 0:
        raise SystemExit(f"run failed (rc={rc}): {' '.join(argv[:6])} ...: {err}")
    if "fsclone" not in argv:
        return seconds, None
    # the newest by start: two passes of the same second sort by their ids' random part
    record = max(list_passes(state), key=lambda r: r.started)
    return seconds, (record.ended or record.started) - record.started


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--entries", type=int, default=1_000_000)
    p.add_argument("--repeat", type=int, default=3, help="timed rounds")
    p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--root", type=Path, default=Path("/dev/shm") / BENCH_ROOT_NAME)
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("--verify-all", action="store_true", help="verify after every round")
    p.add_argument("--cold", action="store_true",
                   help="drop the kernel's caches before every timed run (root; --root on a "
                        "disk filesystem, not a tmpfs)")
    p.add_argument("--delay", type=int, metavar="US",
                   help="the trees on a faultfs mount delaying every metadata request (root)")
    args = p.parse_args(argv)
    if args.cold and os.geteuid() != 0:
        p.error("--cold drops the kernel's caches: run as root")
    if args.delay is not None:
        if os.geteuid() != 0:
            p.error("--delay mounts faultfs: run as root")
        files = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if 4 * args.entries + 1000 > files:
            p.error(f"--delay: four trees of {args.entries} entries need more open files "
                    f"than the faultfs daemon may have ({files}): fewer --entries")
    root = args.root
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="changes-", dir=root))
    try:
        race = run(args, work)
    finally:
        remove(work, root)
    mounted = "" if args.delay is None else f", on faultfs delaying every metadata request " \
                                             f"{args.delay} us"
    facts = report.machine_facts(REPO)
    lines = [f"# fsclone changes bench, {time.strftime('%Y-%m-%d %H:%M:%S %Z')}", "",
             *(f"- {k}: {v}" for k, v in facts.items()),
             f"- entries: {args.entries}, workers: {args.workers}, rounds: {args.repeat}, "
             f"trees in {root} ({_fstype(root)}{mounted}), caches "
             f"{'dropped before every timed run' if args.cold else 'warm'}", "",
             "| tool | best s | in-pass best s | all runs s |", "|---|---|---|---|"]
    for tool, runs in race.times.items():
        in_pass = race.best(tool, in_pass=True)
        lines.append(f"| {tool} | {race.best(tool):.3f} | "
                     f"{'' if in_pass is None else f'{in_pass:.3f}'} | "
                     f"{', '.join(f'{s:.3f}' for s in runs)} |")
    lines.append("")
    ok = not race.unfaithful
    for peer, target in TARGETS.items():
        ratio = race.ratio(peer)
        passed = ratio is not None and ratio >= target
        ok = ok and passed
        lines.append(f"- {'PASS' if passed else 'FAIL'}: {peer} s / --changes s = "
                     f"{_fmt(ratio)} (target >= {target:g}); in-pass: "
                     f"{_fmt(race.ratio(peer, in_pass=True))}")
    lines.append(f"- faithful: {'all' if not race.unfaithful else ', '.join(race.unfaithful)}")
    print("\n".join(lines))
    return 0 if ok else 1


def run(args: argparse.Namespace, work: Path) -> Race:
    """Set up SRC and the three targets (untimed), then race them round by round. SRC is
    made anew, not copied from a cache: the rounds change it, and a million entries fewer
    leave room on a tmpfs of a few million inodes. With ``--delay`` the trees are made
    directly, then raced through the mount."""
    trees_at = work / "backing" if args.delay is not None else work
    log(f"making {trees_at / 'src'} and three targets ...")
    trees.entries(trees_at / "src", args.entries)
    names = {tool: f"dst-{i}" for i, tool in enumerate((CHANGES, FULL, RSYNC))}
    for name in names.values():
        subprocess.run(["cp", "-a", str(trees_at / "src"), str(trees_at / name)], check=True)
    with contextlib.ExitStack() as stack:
        if args.delay is not None:
            (work / "mnt").mkdir()
            fs = stack.enter_context(FaultFS(trees_at, work / "mnt", entry_timeout=3600,
                                             attr_timeout=0))
            fs.delay("meta", args.delay)
            trees_at = work / "mnt"
        return _race(args, work, trees_at / "src",
                     {tool: trees_at / name for tool, name in names.items()})


def _race(args: argparse.Namespace, work: Path, src: Path, targets: dict[str, Path]) -> Race:
    states = {tool: open_state_dir(work / f"state-{i}") for i, tool in enumerate(targets)}
    fsclone = [sys.executable, "-m", "fsclone", "pass", "sync", "-q", "--workers",
               str(args.workers)]
    argv = {CHANGES: [*fsclone, "--changes", str(src), str(targets[CHANGES])],
            FULL: [*fsclone, str(src), str(targets[FULL])],
            RSYNC: ["rsync", "-aHAX", "--delete", f"{src}/", f"{targets[RSYNC]}/"]}
    all_dirs = sorted(d for d in os.listdir(src))
    dirty = all_dirs[::100]  # 1% of the directories, spread over the tree
    store = ChangeStore.open(states[CHANGES], os.path.realpath(src),
                             os.path.realpath(targets[CHANGES]))
    store.hold("the changes bench")
    store.feed_started("bench", resumed=False)
    race = Race({tool: [] for tool in argv}, {tool: [] for tool in (CHANGES, FULL)})
    try:
        log("the complete pass sync the --changes target needs (untimed) ...")
        timed([*fsclone, str(src), str(targets[CHANGES])], states[CHANGES], args.timeout)
        names = list(argv)
        for rnd in range(args.repeat):
            store.record(change(src, dirty, rnd), str(rnd).encode())
            log(f"round {rnd + 1}: {len(dirty)} of {len(all_dirs)} directories changed")
            for tool in names[rnd % 3:] + names[:rnd % 3]:
                if args.cold:
                    drop_caches()
                seconds, in_pass = timed(argv[tool], states[tool], args.timeout)
                race.times[tool].append(seconds)
                if in_pass is not None:
                    race.in_pass[tool].append(in_pass)
                log(f"round {rnd + 1}: {tool}: {seconds:.3f} s")
            if rnd == 0 or args.verify_all:
                for tool, dst in targets.items():
                    if verify(src, dst):
                        race.unfaithful.append(f"{tool} (round {rnd + 1})")
                log(f"round {rnd + 1}: verified")
    finally:
        store.close()
        for state in states.values():
            shutil.rmtree(state, ignore_errors=True)
    return race


def _fstype(path: Path) -> str:
    return subprocess.run(["stat", "-f", "-c", "%T", str(path)], capture_output=True,
                          text=True, check=True).stdout.strip()


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1f}"


if __name__ == "__main__":
    sys.exit(main())
