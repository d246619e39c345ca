"""Stats against real memcached and carbon-cache: exact totals, every dashboard metric stored,
and a pass that outlives both services going down and coming back."""

from __future__ import annotations

import fnmatch
import json
import re
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from pymemcache.client.base import Client

from fsclone.stats import counters as C
from fsclone.stats.memcache import INDEX_KEY, MemcachedSink, total_key, worker_key
from tests.clirun import fsclone, fsclone_env, fsclone_json
from tests.fstree import assert_same_tree
from tests.midpass import held, many_files
from tests.services import CarbonServer, MemcachedServer, wait_for
from tests.snapshots import snap

pytestmark = pytest.mark.service

DASHBOARD = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "fsclone.json"
#: a Graphite path pattern in a target: $prefix, then dot-separated nodes ({a,b} kept whole)
_PATTERN = re.compile(r"\$prefix(?:\.(?:\{[^}]*\}|[^\s,(){}'.]+))+")


def sinks(memcached: MemcachedServer, carbon: CarbonServer) -> dict[str, object]:
    return {"memcached": f"{memcached.host}:{memcached.port}",
            "graphite": f"{carbon.host}:{carbon.port}", "report_interval": 0.1}


def memcached_doc(server: MemcachedServer, key: str) -> Any:
    client = Client((server.host, server.port), connect_timeout=5, timeout=5)
    try:
        raw = client.get(key)
    finally:
        client.close()
    return json.loads(raw) if raw is not None else None


def dashboard_patterns() -> dict[str, str]:
    """Every metric pattern in the dashboard's panel targets and template variables, each with
    what uses it."""
    dash = json.loads(DASHBOARD.read_text())
    found = {}
    for panel in dash["panels"]:
        for target in panel["targets"]:
            found.update({p: panel["title"] for p in _PATTERN.findall(target["target"])})
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            found[var["query"]] = f"variable {var['name']}"
    return found


def _alternatives(node: str) -> list[str]:
    return node[1:-1].split(",") if node.startswith("{") else [node]


def graphite_find(whisper_dir: Path, pattern: str) -> list[str]:
    """Graphite's own matching of ``pattern`` against carbon's tree: series (.wsp files) for
    the last node, directories for a variable's query that ends on one."""
    level = [whisper_dir]
    nodes = pattern.split(".")
    for depth, node in enumerate(nodes):
        last = depth == len(nodes) - 1
        level = [child for parent in level if parent.is_dir() for child in parent.iterdir()
                 if any(fnmatch.fnmatchcase(child.name.removesuffix(".wsp") if last else child.name,
                                            alt) for alt in _alternatives(node))]
    return [".".join(p.relative_to(whisper_dir).with_suffix("").parts) for p in level]


@pytest.fixture(scope="module")
def copied_with_sinks(tmp_path_factory: pytest.TempPathFactory, memcached_server: MemcachedServer,
                      carbon_server: CarbonServer) -> dict[str, Any]:
    """The summary of a copy pass by two workers that reported to both services."""
    root = tmp_path_factory.mktemp("copied")
    src = many_files(root / "src", dirs=12, files=30, size=4096)
    rc, summary = fsclone_json("pass", "copy", "--workers", "2", src, root / "dst",
                               state=root / "state", **sinks(memcached_server, carbon_server))
    assert rc == 0, summary
    return summary


def test_memcached_totals_equal_the_pass_summary(copied_with_sinks: dict[str, Any],
                                                 memcached_server: MemcachedServer,
                                                 tmp_path: Path) -> None:
    summary = copied_with_sinks
    pass_id = summary["pass"]
    total = memcached_doc(memcached_server, total_key(pass_id))
    assert total["status"] == "done" and total["counters"] == summary["counters"]
    assert len(total["workers"]) >= 2
    added: dict[str, int] = {}
    for worker in total["workers"]:
        C.add(added, memcached_doc(memcached_server, worker_key(pass_id, worker))["counters"])
    assert added == summary["counters"]
    assert pass_id in memcached_doc(memcached_server, INDEX_KEY)
    # status from a machine without the pass records: memcached alone
    elsewhere = tmp_path / "no-records"
    proc = fsclone("status", pass_id, "--json", state=elsewhere,
                   memcached=f"{memcached_server.host}:{memcached_server.port}")
    view = json.loads(proc.stdout)
    assert view["source"] == "memcached" and view["counters"] == summary["counters"]
    assert {w["worker"] for w in view["workers"]} == set(total["workers"])


def test_carbon_stores_every_metric_the_dashboard_queries(copied_with_sinks: dict[str, Any],
                                                           carbon_server: CarbonServer) -> None:
    summary = copied_with_sinks
    pass_id = summary["pass"]
    patterns = dashboard_patterns()
    assert len(patterns) >= 10
    for pattern, used_by in patterns.items():
        concrete = pattern.replace("$prefix", "fsclone").replace("$pass", pass_id) \
            .replace("$host", "*")
        def find(c: str = concrete) -> list[str]:
            return graphite_find(carbon_server.whisper_dir, c)
        found = wait_for(find, 30, f"{concrete} (in {used_by})")
        if not pattern.endswith(".*"):  # a series, not a variable's list of nodes
            for series in found:
                assert carbon_server.read_series(series), f"{series} holds no point"
    # the last point of each pass total is the pass summary's number
    for counter in (C.SCANNED, C.COPIED, C.BYTES, C.CHUNKS):
        metric = f"fsclone.{pass_id}.total.{counter}"
        def reached(points: list[tuple[int, float]], c: str = counter) -> bool:
            return bool(points) and points[-1][1] == summary["counters"][c]
        carbon_server.wait_series(metric, reached)


def test_a_pass_outlives_its_stats_services(tmp_path: Path, memcached_server: MemcachedServer,
                                            carbon_server: CarbonServer) -> None:
    src, dst, state = many_files(tmp_path / "src"), tmp_path / "dst", tmp_path / "state"
    log = tmp_path / "stderr"

    def logged(what: str, count: int) -> bool:
        return log.read_text().count(what) >= count

    try:
        with held(src / "d039/f059"):  # the pass runs while the services go and come
            with open(log, "wb") as err:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "fsclone", "pass", "copy", "--workers", "2", "--json",
                     str(src), str(dst)], stdout=subprocess.PIPE, stderr=err,
                    env=fsclone_env(state, **sinks(memcached_server, carbon_server)))
            wait_for(lambda: memcached_doc(memcached_server, INDEX_KEY), 30, "a first report")
            memcached_server.stop()
            carbon_server.stop()
            wait_for(lambda: logged("is down", 2), 30, "both sinks logged down")
            memcached_server.start()
            carbon_server.start()
            wait_for(lambda: logged("is back", 2), 60, "both sinks logged back")
        out, _ = proc.communicate(timeout=300)
    finally:
        for server in (memcached_server, carbon_server):
            if not server.running:
                server.start()
    summary = json.loads(out)
    assert proc.returncode == 0 and summary["status"] == "done", log.read_text()
    assert_same_tree(src, dst)
    lines = log.read_text().splitlines()
    for name in ("memcached", "graphite"):
        assert sum(f"stats: {name} " in line and "is down" in line for line in lines) == 1
        assert sum(f"stats: {name} " in line and "is back" in line for line in lines) == 1
    # memcached lost everything when it stopped; the reports after it came back are totals
    total = memcached_doc(memcached_server, total_key(summary["pass"]))
    assert total["counters"] == summary["counters"]


def test_concurrent_coordinators_all_get_into_the_index(memcached_server: MemcachedServer) -> None:
    address = (memcached_server.host, memcached_server.port)
    ids = [f"20260101-000000-copy-race{i:02d}" for i in range(8)]

    def report(pass_id: str) -> None:
        sink = MemcachedSink(address, interval=1.0)
        try:
            sink.send(replace(snap(1), pass_id=pass_id))
        finally:
            sink.close()

    threads = [threading.Thread(target=report, args=(i,)) for i in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(ids) <= set(memcached_doc(memcached_server, INDEX_KEY))
