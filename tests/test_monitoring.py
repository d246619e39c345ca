"""Stats against real memcached, carbon-cache and graphite-web: exact totals, every dashboard
panel answered by graphite-web after a real pass, and a pass that outlives both services going
down and coming back."""

from __future__ import annotations

import json
import secrets
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
from tests.services import (
    CarbonServer,
    GraphiteWebServer,
    MemcachedServer,
    grafana_expand,
    wait_for,
)
from tests.snapshots import snap

pytestmark = pytest.mark.service

DASHBOARD = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "fsclone.json"
#: the workers of the pass the dashboard is checked against
WORKERS = 4
#: the migration's Graphite node (PASS_LABEL): this module's own, whatever else the session sent
LABEL = f"t{secrets.token_hex(4)}"


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


def dashboard() -> dict[str, Any]:
    dash: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dash


def fill(expression: str) -> str:
    """A dashboard expression as Grafana sends it for our pass, every host."""
    return grafana_expand(expression, {"prefix": "fsclone", "label": LABEL, "op": "copy",
                                       "host": "*"})


@pytest.fixture(scope="module")
def copied_with_sinks(tmp_path_factory: pytest.TempPathFactory, memcached_server: MemcachedServer,
                      carbon_server: CarbonServer) -> dict[str, Any]:
    """The summary of a copy pass by four workers that reported to both services, named by
    their flags (enough directories that each worker copies some: two chunks in flight per
    worker)."""
    root = tmp_path_factory.mktemp("copied")
    src = many_files(root / "src", dirs=40, files=10, size=4096)
    rc, summary = fsclone_json("pass", "copy", "--workers", str(WORKERS), src, root / "dst",
                               "--memcached", f"{memcached_server.host}:{memcached_server.port}",
                               "--graphite", f"{carbon_server.host}:{carbon_server.port}",
                               state=root / "state", pass_label=LABEL, report_interval=0.1)
    assert rc == 0, summary
    return summary


def test_memcached_totals_equal_the_pass_summary(copied_with_sinks: dict[str, Any],
                                                 memcached_server: MemcachedServer,
                                                 tmp_path: Path) -> None:
    summary = copied_with_sinks
    pass_id = summary["pass"]
    total = memcached_doc(memcached_server, total_key(pass_id))
    assert total["status"] == "done" and total["counters"] == summary["counters"]
    assert len(total["workers"]) == WORKERS
    added: dict[str, int] = {}
    for worker in total["workers"]:
        C.add(added, memcached_doc(memcached_server, worker_key(pass_id, worker))["counters"])
    assert added == summary["counters"]
    assert pass_id in memcached_doc(memcached_server, INDEX_KEY)
    # status from a machine without the pass records: memcached alone
    elsewhere = tmp_path / "no-records"
    proc = fsclone("status", pass_id, "--json", "--memcached",
                   f"{memcached_server.host}:{memcached_server.port}", state=elsewhere)
    view = json.loads(proc.stdout)
    assert view["source"] == "memcached" and view["counters"] == summary["counters"]
    assert {w["worker"] for w in view["workers"]} == set(total["workers"])


def test_graphite_web_answers_every_panel_of_the_dashboard(copied_with_sinks: dict[str, Any],
                                                          graphite_web: GraphiteWebServer) -> None:
    """What Grafana asks graphite-web for this pass: each template variable lists its nodes,
    each panel's every target renders a series with points, one line per worker on the
    worker panel."""
    dash = dashboard()
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            def listed(q: str = fill(var["query"])) -> list[str]:
                return graphite_web.find(q)
            wait_for(listed, 30, f"/metrics/find of variable {var['name']}")
    assert graphite_web.find(fill("$prefix.$label.*")) == ["copy"]
    targets = [(panel["title"], fill(t["target"])) for panel in dash["panels"]
               for t in panel["targets"]]
    assert len(targets) >= 14
    for title, target in targets:
        def rendered(t: str = target) -> list[dict[str, Any]]:
            series = graphite_web.render(t)
            return series if series and all(
                any(v is not None for v, _ in s["datapoints"]) for s in series) else []
        series = wait_for(rendered, 30, f"/render of {target} (panel {title!r})")
        if title == "Files copied per second, by worker":
            assert len(series) == WORKERS, [s["target"] for s in series]
    # no panel ends at a stale value: the last point of each pass total is the summary's
    # number, and nothing is left outstanding or queued
    ends = {c: copied_with_sinks["counters"][c] for c in (C.SCANNED, C.COPIED, C.BYTES, C.CHUNKS)}
    for name, value in {**ends, "outstanding": 0, "queue_depth": 0}.items():
        def last(n: str = name, v: int = value) -> bool:
            [series] = graphite_web.render(fill(f"$prefix.$label.$op.total.{n}"))
            return [p for p, _ in series["datapoints"] if p is not None][-1] == v
        wait_for(last, 30, f"the last point of total.{name} to be {value}")


def test_every_pass_of_a_migration_writes_the_same_series(tmp_path: Path,
                                                          carbon_server: CarbonServer) -> None:
    """The Graphite tree does not grow with passes: a second pass of the migration (its own
    pass id) adds no series to the first's, so carbon's create limit is met once."""
    label = f"{LABEL}-again"
    src, dst = many_files(tmp_path / "src", dirs=8, files=5, size=1024), tmp_path / "dst"
    tree = carbon_server.whisper_dir / "fsclone" / label
    seen: list[set[str]] = []

    def settled() -> set[str] | None:
        """The series carbon holds for the migration, once two reads a second apart agree."""
        now = {str(p.relative_to(tree)) for p in tree.rglob("*.wsp")}
        seen.append(now)
        return now if len(seen) > 1 and seen[-2] == now and now else None

    ids = []
    for _ in range(2):
        rc, summary = fsclone_json("pass", "copy", "--workers", str(WORKERS), src, dst,
                                   state=tmp_path / "state", pass_label=label,
                                   graphite=f"{carbon_server.host}:{carbon_server.port}",
                                   report_interval=0.1)
        assert rc == 0, summary
        ids.append(summary["pass"])
        def ended(points: list[tuple[int, float]], s: dict[str, Any] = summary) -> bool:
            return bool(points) and points[-1][1] == s["counters"].get(C.SAME, 0)
        carbon_server.wait_series(f"fsclone.{label}.copy.total.unchanged", ended)
        seen.clear()
        if len(ids) == 1:
            first = wait_for(settled, 30, "the first pass's series", poll=1.0)
    assert ids[0] != ids[1]
    assert wait_for(settled, 30, "the second pass's series", poll=1.0) == first
    assert any(name.startswith("copy/host/") for name in first)


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
