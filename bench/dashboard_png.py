"""The dashboard's main panel as graphite-web draws it, after a real pass: the picture in
docs/monitoring.md.

    python3 bench/dashboard_png.py            # 100,000 files on /dev/shm, 4 workers

Starts carbon-cache and Debian's graphite-web on loopback (tests/services.py), copies a tree of
small files with ``--graphite`` pointing at carbon (REPORT_INTERVAL 1 s, carbon keeps 1 s
points), checks the copy with rsync -aHAXc, waits until graphite-web has the pass's final
report, and saves ``/render?format=png`` of the panel's targets over the pass, as Grafana would
ask them for every host.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trees
from tools import BENCH_ROOT_NAME, launch, remove, verify

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))

from tests.services import (  # noqa: E402
    CarbonServer,
    GraphiteWebServer,
    grafana_expand,
    wait_for,
)

DASHBOARD = REPO / "deploy" / "grafana" / "fsclone.json"
LABEL = "bench"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def main_panel(title: str | None) -> dict[str, Any]:
    """The panel called ``title``, else the dashboard's first time series (files per second)."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    for panel in panels:
        if panel["title"] == title or (title is None and panel["type"] == "timeseries"):
            found: dict[str, Any] = panel
            return found
    raise SystemExit(f"no panel {title!r} in {DASHBOARD}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--panel", help="the panel's title [the first time series]")
    ap.add_argument("--where", type=Path, default=Path("/dev/shm") / BENCH_ROOT_NAME)
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "monitoring-panel.png")
    ap.add_argument("--timeout", type=float, default=1800)
    args = ap.parse_args()

    panel = main_panel(args.panel)
    root = args.where
    tree = trees.cached(root / "trees", f"small-{args.files}",
                        lambda r: trees.small_files(r, args.files), log)
    src, dst = Path(str(tree["path"])), root / "dashboard" / "dst"
    remove(dst, root)
    dst.parent.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fsclone-dashboard-") as tmp:
        work = Path(tmp)
        (work / "carbon").mkdir()
        (work / "web").mkdir()
        with CarbonServer(work / "carbon") as carbon, \
                GraphiteWebServer(work / "web", carbon) as web:
            env = {k: v for k, v in os.environ.items() if not k.startswith("FSCLONE_")}
            env |= {"FSCLONE_REPORT_INTERVAL": "1", "FSCLONE_PASS_LABEL": LABEL}
            argv = [sys.executable, "-m", "fsclone", "pass", "copy", "--workers",
                    str(args.workers), "--graphite", f"{carbon.host}:{carbon.port}",
                    "--state-dir", str(work / "state"), str(src), str(dst)]
            started = time.time()
            seconds, rc, tail, _ = launch(argv, env, REPO, args.timeout, measure_mem=False)
            log(f"copy of {args.files:,} files, {args.workers} workers: {seconds:.1f}s rc={rc}")
            diff = verify(src, dst)
            if rc != 0 or diff:
                print(f"the pass failed or is not faithful: rc={rc}\n{tail}\n{diff[:10]}")
                return 1
            values = {"prefix": "fsclone", "label": LABEL, "op": "copy", "host": "*"}

            def final_report() -> bool:
                [series] = web.render(grafana_expand("$prefix.$label.$op.total.outstanding",
                                                     values))
                points = [v for v, _ in series["datapoints"] if v is not None]
                return bool(points) and points[-1] == 0
            wait_for(final_report, 60, "the final report in graphite-web")
            query = {"format": "png", "width": "900", "height": "360", "from": str(
                int(started) - 2), "until": str(int(time.time()) + 2), "title": panel["title"],
                "vtitle": "files/s", "bgcolor": "white", "fgcolor": "black",
                "majorGridLineColor": "#cccccc", "minorGridLineColor": "#eeeeee",
                "lineWidth": "2", "connectedLimit": "5"}
            targets = [grafana_expand(t["target"], values) for t in panel["targets"]]
            png = web.get("/render", *[("target", t) for t in targets], **query)
    remove(dst, root)
    if not png.startswith(PNG_MAGIC):
        print(f"graphite-web answered no PNG: {png[:200]!r}")
        return 1
    args.out.write_bytes(png)
    print(f"{args.out}: {panel['title']!r}, {len(targets)} targets, {len(png):,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
