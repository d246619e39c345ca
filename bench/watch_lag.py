"""The watcher's lag: how long a change made in SRC takes to be on DST, under a steady stream.

    python3 bench/watch_lag.py                       # 1,000 changes/s for 30 s, 2 workers
    python3 bench/watch_lag.py --rate 2000 --seconds 60 --workers 4

Two tmpfs are mounted (root: SRC and DST on filesystems of their own, as a mirror has them),
SRC is filled with a tree (``--dirs`` directories of ``--files`` files), and ``fsclone watch``
runs as its own process. A writer process then makes ``--rate`` changes a second (creates,
appends, truncates, renames across directories, removals, chmods, in random directories) and,
every 0.1 s, a marker file stamped with the time it was made; this process watches DST for each
marker and records how late it arrived (event to on DST). Reported: the changes made, the
markers' lag (median, 95th percentile, max), the lag ``fsclone status`` showed, and how long
DST took to be faithful (tests/fstree's snapshot) after the writer stopped.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fsclone.state.watch import WATCHING, read_status  # noqa: E402
from tests.fstree import snapshot, tree_diffs  # noqa: E402

MARK_EVERY = 0.1


def fill(src: Path, dirs: int, files: int) -> list[Path]:
    folders = [src / f"d{i:04d}" for i in range(dirs)]
    for d in folders:
        d.mkdir()
        for j in range(files):
            (d / f"f{j:04d}").write_bytes(os.urandom(512))
    return folders


def write(folders: list[Path], rate: float, seconds: float, marks: Path) -> None:
    """The writer: ``rate`` changes a second for ``seconds``, and a marker every 0.1 s
    (its name and time appended to ``marks``)."""
    rng = random.Random(7)
    files = [f for d in folders for f in d.iterdir()]
    serial = 0
    start = time.monotonic()
    next_mark = start
    done = 0
    with open(marks, "w") as log:
        while (now := time.monotonic()) - start < seconds:
            if now >= next_mark:
                serial += 1
                marker = rng.choice(folders) / f"mark{serial}"
                marker.write_bytes(b"m")
                log.write(f"{marker.relative_to(folders[0].parent)}\t{time.time()}\n")
                log.flush()
                next_mark += MARK_EVERY
            serial += 1
            kind = rng.randrange(6)
            i = rng.randrange(len(files))
            f = files[i]
            try:
                if kind == 0:
                    new = rng.choice(folders) / f"n{serial}"
                    new.write_bytes(os.urandom(rng.randrange(1, 4096)))
                    files.append(new)
                elif kind == 1:
                    with open(f, "ab") as out:
                        out.write(os.urandom(256))
                elif kind == 2:
                    os.truncate(f, rng.randrange(256))
                elif kind == 3:
                    moved = rng.choice(folders) / f"r{serial}"
                    f.rename(moved)
                    files[i] = moved
                elif kind == 4 and len(files) > 100:
                    f.unlink()
                    files[i] = files[-1]
                    files.pop()
                else:
                    os.chmod(f, rng.choice((0o600, 0o644, 0o640)))
            except FileNotFoundError:
                pass
            done += 1
            ahead = start + done / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
    print(f"writer: {done:,} changes in {time.monotonic() - start:.1f}s "
          f"({done / (time.monotonic() - start):,.0f}/s)", flush=True)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=1000)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--dirs", type=int, default=100)
    ap.add_argument("--files", type=int, default=100)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="fsclone-watch-lag-"))
    mounts = [base / "a", base / "b"]
    for m in mounts:
        m.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2g", "tmpfs", m], check=True)
    watcher: subprocess.Popen[bytes] | None = None
    try:
        src, dst, state = mounts[0] / "src", mounts[1] / "dst", base / "state"
        src.mkdir()
        folders = fill(src, args.dirs, args.files)
        env = {**os.environ, "FSCLONE_STATE_DIR": str(state)}
        with open(base / "watch.log", "wb") as log:  # the watcher's own copy stays open
            watcher = subprocess.Popen([sys.executable, "-m", "fsclone", "watch", str(src),
                                        str(dst), "--workers", str(args.workers)],
                                       env=env, stdout=log, stderr=log, cwd=REPO)
        while not ((s := read_status(state, str(src), str(dst))) and s.state == WATCHING):
            assert watcher.poll() is None, (base / "watch.log").read_text()
            time.sleep(0.2)
        print(f"tree: {args.dirs * args.files:,} files in {args.dirs} directories; "
              f"the watcher's full sync is done", flush=True)
        marks = base / "marks"
        writer = multiprocessing.get_context("fork").Process(
            target=write, args=(folders, args.rate, args.seconds, marks))
        writer.start()
        seen: dict[str, float] = {}
        made: dict[str, float] = {}
        status_lags: list[float] = []
        next_status = 0.0
        ended: float | None = None  # when the writer was seen to have stopped
        while writer.is_alive() or len(seen) < len(made):
            if ended is None and not writer.is_alive():
                ended = time.time()
            if marks.exists():
                for line in marks.read_text().splitlines():
                    name, when = line.split("\t")
                    made[name] = float(when)
            now = time.time()
            for name in made.keys() - seen.keys():
                if (dst / name).exists():
                    seen[name] = now - made[name]
            if now >= next_status and (s := read_status(state, str(src), str(dst))):
                status_lags.append(s.lag(now))
                next_status = now + 0.5
            if not writer.is_alive() and now - max(made.values(), default=now) > 60:
                break
            time.sleep(0.02)
        stopped = ended or time.time()
        while True:  # the time the first check that found DST faithful began
            began = time.time()
            if not tree_diffs(snapshot(src, atime=False), snapshot(dst, atime=False)):
                break
        settled, check = began - stopped, time.time() - began
        lags = list(seen.values())
        s = read_status(state, str(src), str(dst))
        print(f"markers: {len(lags)} of {len(made)} on DST; lag median "
              f"{statistics.median(lags):.2f}s, p95 {percentile(lags, 0.95):.2f}s, "
              f"max {max(lags):.2f}s")
        print(f"status lag: max {max(status_lags):.2f}s over {len(status_lags)} samples; "
              f"events seen {s.events if s else '?':,}")
        print(f"after the writer stopped: DST faithful {settled:.2f}s later (at the start of "
              f"the check that found it so; a check takes {check:.2f}s)")
    finally:
        if watcher is not None:
            watcher.send_signal(signal.SIGTERM)
            watcher.wait(60)
        for m in mounts:
            subprocess.run(["umount", "-l", m], check=False)


if __name__ == "__main__":
    main()
