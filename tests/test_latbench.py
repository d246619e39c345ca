"""The latency benchmark (bench/latency.py) end to end at a tiny size, so it cannot rot: it
runs, its copies are faithful, and its report carries the request counts and the floors.
Asserts no time: the bench reports times, the tests only that it measured them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.faultmount import require_faultfs

REPO = Path(__file__).resolve().parent.parent
CASES = ("copy", "noop", "sync", "rewrite")


def run_bench(tmp_path: Path) -> dict[str, Any]:
    require_faultfs()
    out = tmp_path / "lat.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench/latency.py"), "--files", "50", "--delays", "50",
         "--repeat", "1", "--tools", "fsclone,rsync,cp",
         "--fsclone", f"{sys.executable} -m fsclone",
         "--root", str(tmp_path / "fsclone-bench"), "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr
    assert out.with_suffix(".md").read_text().startswith("# fsclone latency bench")
    doc: dict[str, Any] = json.loads(out.read_text())
    return doc


def test_latency_bench_runs_and_reports_counts_and_floors(tmp_path: Path) -> None:
    doc = run_bench(tmp_path)
    [result] = doc["results"]
    assert result["delay_us"] == 50 and result["facts"]["files"] == 50
    runs = {(r["tool"], r["phase"]): r for r in result["runs"]}
    assert set(runs) == {(t, c) for t in ("fsclone", "rsync") for c in CASES} | {("cp", "copy")}
    assert all(r["rc"] == 0 and r["faithful"] for r in runs.values()), result["runs"]
    assert all(r["seconds"] > 0 and r["daemon_cpu"] >= 0 for r in runs.values())

    per = {(e["tool"], e["case"]): e["counts"] for e in result["requests_per_file"]}
    assert set(per) == set(runs)
    # every new file is opened on the source and created on the target: once each, at least
    copy = per["fsclone", "copy"]
    assert copy["source"]["OPEN"] >= 1 and copy["target"]["CREATE"] >= 1
    # a no-op re-run creates no file (only, once a pass, the profile's two probe files in its
    # private directory: faultfs has no O_TMPFILE); a sync onto which every file changed
    # copies each again
    assert per["fsclone", "noop"]["target"].get("CREATE", 0) * 50 <= 2
    assert per["rsync", "rewrite"]["target"]["CREATE"] >= 0.9

    assert result["cpu_per_request"] > 0
    floors = {f["case"]: f for f in result["floors"]}
    assert set(floors) == set(CASES)
    assert all(f["floor"] > 0 and f["needed_meta"]["target"] > 0 for f in floors.values())
    summary = {(s["tool"], s["phase"]): s for s in result["summary"]}
    assert summary["fsclone", "copy"]["fsclone_over_tool"] == 1.0
    assert summary["cp", "copy"]["fsclone_over_tool"] is not None
