"""What the stats sinks cost a pass: copy the same tree with no sinks, with memcached and carbon up,
and with both stopped (or frozen) mid-way; report each time as a ratio to the run without sinks.

    python3 bench/sinks_bench.py                  # 100,000 files on /dev/shm, best of 3
    python3 bench/sinks_bench.py --files 5000 --repeat 1

Variants take turns in a rotated order in each round, so a load change on a shared machine hits
them alike. memcached and carbon-cache are real servers on loopback (tests/services.py starts
them); REPORT_INTERVAL is short (0.2 s) so the sinks are busy for the whole run. "stopped" stops
both services a third of the way into the run (connections refused); "frozen" SIGSTOPs them
instead (connections hang until the sinks' timeouts); each is resumed for the next round.
Every run is checked with rsync -aHAXc (empty itemized output: faithful). Besides wall time,
each run's CPU time (the pass's whole process tree, from getrusage) is reported: on a machine
shared with other work it varies much less than the wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import report
import trees
from tools import BENCH_ROOT_NAME, launch, remove, verify

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))

from tests.services import CarbonServer, MemcachedServer, Server, free_port  # noqa: E402

VARIANTS = ("none", "up", "stopped", "frozen")
MID_WAY = 1 / 3  # of the no-sink best time: when the services go down


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Services:
    """memcached and carbon-cache for the whole bench, each stopped or frozen on cue."""

    def __init__(self, workdir: Path) -> None:
        (workdir / "mc").mkdir()
        (workdir / "carbon").mkdir()
        self.servers: list[Server] = [MemcachedServer(workdir / "mc", free_port()),
                                      CarbonServer(workdir / "carbon")]
        for server in self.servers:
            server.start()

    def env(self) -> dict[str, str]:
        mc, carbon = self.servers
        return {"FSCLONE_MEMCACHED": f"{mc.host}:{mc.port}",
                "FSCLONE_GRAPHITE": f"{carbon.host}:{carbon.port}"}

    def _pids(self) -> list[int]:
        return [s._proc.pid for s in self.servers if s._proc is not None and s.running]

    def stop(self) -> None:
        """Gone at once (SIGKILL), and reaped only by ``restore`` after the run: a graceful
        carbon shutdown would flush its cache on the very cores the pass runs on, and reaping
        them now would add their CPU time to the run's."""
        for pid in self._pids():
            os.kill(pid, signal.SIGKILL)

    def freeze(self) -> None:
        for pid in self._pids():
            os.kill(pid, signal.SIGSTOP)

    def restore(self) -> None:
        """Both up and answering again, whatever the last run did to them."""
        for pid in self._pids():
            os.kill(pid, signal.SIGCONT)
        for server in self.servers:
            if not server.running:
                server.kill()  # reap the one stop() killed
                server.start()

    def close(self) -> None:
        self.restore()
        for server in self.servers:
            server.stop()


def one_run(variant: str, src: Path, dst: Path, services: Services, base_env: dict[str, str],
            workers: int, mid_way: float, timeout: float) -> dict[str, Any]:
    env = dict(base_env)
    if variant != "none":
        env.update(services.env())
    cue: dict[str, Callable[[], None]] = {"stopped": services.stop, "frozen": services.freeze}
    timer = threading.Timer(mid_way, cue[variant]) if variant in cue else None
    argv = [sys.executable, "-m", "fsclone", "pass", "copy", "--workers", str(workers),
            "--state-dir", str(dst.parent / f"state-{variant}"), str(src), str(dst)]
    if timer:
        timer.start()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        seconds, rc, tail, _ = launch(argv, env, REPO, timeout, measure_mem=False)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    finally:
        if timer:
            timer.cancel()
        services.restore()
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    diff = verify(src, dst)
    return {"variant": variant, "seconds": seconds, "cpu": cpu, "rc": rc,
            "faithful": not diff, "diff": diff[:10], "stderr": tail}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--where", type=Path, default=Path("/dev/shm") / BENCH_ROOT_NAME)
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--json", type=Path, help="results file [bench/results/sinks-<time>.json]")
    args = ap.parse_args()

    root = args.where
    work = root / "sinks"
    work.mkdir(parents=True, exist_ok=True)
    tree = trees.cached(root / "trees", f"small-{args.files}",
                        lambda r: trees.small_files(r, args.files), log)
    src = Path(str(tree["path"]))
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("FSCLONE_")}
    base_env["FSCLONE_REPORT_INTERVAL"] = "0.2"
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="fsclone-sinks-") as tmp:
        services = Services(Path(tmp))
        try:
            mid_way = 1.0
            for rep in range(args.repeat):
                order = VARIANTS[rep % len(VARIANTS):] + VARIANTS[:rep % len(VARIANTS)]
                for variant in order:
                    dst = work / f"dst-{variant}"
                    remove(dst, root)
                    for stale in work.glob(f"state-{variant}"):
                        remove(stale, root)
                    run = one_run(variant, src, dst, services, base_env, args.workers,
                                  mid_way, args.timeout)
                    run["rep"] = rep
                    runs.append(run)
                    log(f"round {rep + 1}: {variant:8} {run['seconds']:.2f}s rc={run['rc']} "
                        f"faithful={run['faithful']}")
                    if variant == "none":
                        mid_way = min(r["seconds"] for r in runs if r["variant"] == "none") \
                            * MID_WAY
                    remove(dst, root)
        finally:
            services.close()

    best = {v: min(r["seconds"] for r in runs if r["variant"] == v) for v in VARIANTS}
    cpu = {v: min(r["cpu"] for r in runs if r["variant"] == v) for v in VARIANTS}
    lines = [f"# fsclone stats sinks cost: {args.files:,} files, {args.workers} workers, "
             f"best of {args.repeat}", "",
             "| variant | best s | median s | best / no sinks | best CPU s | CPU / no sinks "
             "| all ok and faithful |", "|---|---|---|---|---|---|---|"]
    for v in VARIANTS:
        mine = [r for r in runs if r["variant"] == v]
        ok = all(r["rc"] == 0 and r["faithful"] for r in mine)
        lines.append(f"| {v} | {best[v]:.2f} | {statistics.median(r['seconds'] for r in mine):.2f}"
                     f" | {best[v] / best['none']:.3f} | {cpu[v]:.2f} | "
                     f"{cpu[v] / cpu['none']:.3f} | {'yes' if ok else 'NO'} |")
    facts = report.machine_facts(REPO) | {"fs": report.fstype(src)}
    lines += ["", "machine: " + ", ".join(f"{k} {v}" for k, v in facts.items())]
    print("\n".join(lines))
    out = args.json or BENCH / "results" / f"sinks-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": facts, "files": args.files, "workers": args.workers,
                               "repeat": args.repeat, "best": best, "best_cpu": cpu,
                               "runs": runs}, indent=1))
    failed = [r for r in runs if r["rc"] != 0 or not r["faithful"]]
    return 1 if failed or any(best[v] > 1.10 * best["none"] for v in VARIANTS) else 0


if __name__ == "__main__":
    sys.exit(main())
