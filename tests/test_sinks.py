"""The stats plumbing without services: a sink that is down or hung never holds a pass up and is
logged once each way; metric names; the retry seed."""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from fsclone.chunk import ItemError
from fsclone.config import Config
from fsclone.engine.coordinator import Hooks
from fsclone.engine.launch import PassRequest, run_pass
from fsclone.engine.retry import seed_for
from fsclone.errors import ConfigError
from fsclone.optionvalues import parse_address
from fsclone.stats.graphite import metrics
from fsclone.stats.reporter import Reporter
from fsclone.stats.sinks import Sink, SinkError
from fsclone.stats.snapshot import Snapshot
from fsclone.transport.memory import MemoryTransport
from tests.services import wait_for
from tests.snapshots import snap


class FlakySink(Sink):
    """Fails while ``down`` is set; blocks while ``hung`` is clear; records what it got."""

    def __init__(self) -> None:
        self.name = "flaky"
        self.down = threading.Event()
        self.hung = threading.Event()
        self.hung.set()
        self.got: list[Snapshot] = []

    def send(self, snapshot: Snapshot) -> None:
        self.hung.wait()
        if self.down.is_set():
            raise SinkError("ConnectionRefusedError: refused")
        self.got.append(snapshot)


def test_a_down_sink_is_logged_once_when_it_goes_and_once_when_it_comes_back() -> None:
    sink = FlakySink()
    notes: list[str] = []
    reporter = Reporter([sink], notes.append)
    reporter.offer(snap(1))
    wait_for(lambda: sink.got, 5, "the first report")
    sink.down.set()
    offered = itertools.count(2)

    def failed_twice() -> bool:  # new reports keep coming while the sink is down
        reporter.offer(snap(next(offered)))
        return reporter.feeds[0].failed >= 2

    wait_for(failed_twice, 5, "failed reports", poll=0.001)
    sink.down.clear()
    reporter.offer(snap(50, "done"))
    reporter.close()
    assert [n.split(" (")[0] for n in notes] == ["stats: flaky is down", "stats: flaky is back"]
    assert "the pass goes on" in notes[0]
    assert sink.got[-1].status == "done" and sink.got[-1].counters == {"files_copied": 100}


def test_a_hung_sink_never_blocks_the_coordinator() -> None:
    sink = FlakySink()
    notes: list[str] = []
    sink.hung.clear()
    reporter = Reporter([sink], notes.append, close_timeout=0.5)
    started = time.monotonic()
    for n in range(10_000):
        reporter.offer(snap(n))
    assert time.monotonic() - started < 2.0  # ~µs each: nothing waits for the sink
    assert reporter.feeds[0].dropped >= 9_998  # superseded snapshots, never a queue that grows
    started = time.monotonic()
    reporter.close()
    assert time.monotonic() - started < 1.5
    assert notes == ["stats: flaky did not take the final totals within 0.5s"]
    sink.hung.set()


class TimingOutSink(Sink):
    """A service that accepts connections but never answers: each send takes a timeout."""

    name = "slow"
    timeout = 0.3

    def send(self, snapshot: Snapshot) -> None:
        time.sleep(self.timeout)
        raise SinkError("TimeoutError: timed out")


def test_a_timing_out_sink_holds_the_end_of_a_pass_for_one_timeout_at_most() -> None:
    notes: list[str] = []
    reporter = Reporter([TimingOutSink()], notes.append)
    reporter.offer(snap(1))
    reporter.offer(snap(2, "done"))  # the final totals arrive while the first send hangs
    started = time.monotonic()
    reporter.close()
    assert time.monotonic() - started < 1.5 * TimingOutSink.timeout
    assert len(notes) == 2 and notes[0].startswith("stats: slow is down (TimeoutError")
    assert notes[1] == "stats: slow is still down: the final totals were not sent"


def test_rates_are_per_worker_and_per_pass() -> None:
    first = snap(10).with_rates(None)
    second = snap(20).with_rates(first)
    assert second.rates["node1.ib0.0"]["files_copied"] == 1.0
    assert second.rates[""]["files_copied"] == 2.0
    assert first.rates[""]["files_copied"] == 2.0  # since the pass started


def test_metric_names_are_sanitized_and_complete() -> None:
    sent = dict(metrics(snap(4).with_rates(None), "site.hpc fs"))
    base = "site.hpc_fs.d.copy"  # the target's basename and the op, never the pass id
    assert sent[f"{base}.total.files_copied"] == 8
    assert sent[f"{base}.total.errors"] == 0  # sent while zero: every panel has a series
    assert sent[f"{base}.total.outstanding"] == 5 and sent[f"{base}.total.queue_depth"] == 3
    # "node1.ib0.1": host "node1.ib0" (its dot would add a level), worker "1"
    assert sent[f"{base}.host.node1_ib0.1.files_copied"] == 4
    assert sent[f"{base}.host.node1_ib0.1.rate.files_copied"] == 1.0
    assert all(" " not in path for path in sent)


def test_metric_names_last_across_passes() -> None:
    """Every pass of a migration writes the same series: the site's PASS_LABEL (one node),
    else the target's basename (the source's for a scan)."""
    first = snap(4).with_rates(None)
    later = replace(first, pass_id="20260102-000000-copy-123456", dst="/gpfs/new/")
    assert {p for p, _ in metrics(first, "fsclone", "home.v2")} == \
        {p for p, _ in metrics(later, "fsclone", "home.v2")}
    assert all(p.startswith("fsclone.home_v2.copy.") for p, _ in metrics(later, "fsclone",
                                                                         "home.v2"))
    assert all(p.startswith("fsclone.new.copy.") for p, _ in metrics(later, "fsclone"))
    scan = replace(first, op="scan", src="/lustre/old", dst="")
    assert all(p.startswith("fsclone.old.scan.") for p, _ in metrics(scan, "fsclone"))


def test_the_final_report_ends_every_series_the_pass_sent(tmp_path: Path) -> None:
    """A pass reporting all along: each Graphite series of any report is in the last one (so
    no panel ends at a stale value), queue depth included, at 0 once the pass is done."""
    src = tmp_path / "src"
    for d in range(6):
        (src / f"d{d}").mkdir(parents=True)
        for f in range(20):
            (src / f"d{d}" / f"f{f}").write_bytes(b"x" * f)
    reports: list[Snapshot] = []
    hooks = Hooks(stats=reports.append, stats_interval=0.0)
    cfg = Config(workers=2, state_dir=str(tmp_path / "state"), dir_slice=5)
    _, summary = run_pass(cfg, PassRequest(op="copy", src=str(src), dst=str(tmp_path / "dst")),
                          hooks, MemoryTransport())
    assert summary.status == "done" and len(reports) > 2
    final = dict(metrics(reports[-1].with_rates(reports[-2]), "fsclone"))
    sent = {path for r in reports for path, _ in metrics(r.with_rates(None), "fsclone")}
    assert sent <= set(final)
    assert final["fsclone.dst.copy.total.queue_depth"] == 0
    assert final["fsclone.dst.copy.total.outstanding"] == 0


@pytest.mark.parametrize(("value", "expected"), [
    ("mc1", ("mc1", 11211)), ("mc1:1234", ("mc1", 1234)), ("[::1]:99", ("::1", 99)),
    ("::1", ("::1", 11211)), ("[fe80::1]", ("fe80::1", 11211))])
def test_addresses(value: str, expected: tuple[str, int]) -> None:
    assert parse_address(value, 11211) == expected


@pytest.mark.parametrize("value", ["mc1:port", "mc1:0", ":11211"])
def test_bad_addresses(value: str) -> None:
    with pytest.raises(ConfigError):
        parse_address(value, 11211)


def test_retry_seed_redoes_each_failed_item_once() -> None:
    errors = [ItemError("a/b/f1", "copy", 13, "denied"), ItemError("a/b/f2", "range", 5, "EIO"),
              ItemError("a/b", "dirmeta", 1, "EPERM"), ItemError("top", "copy", 28, "ENOSPC"),
              ItemError("c", "dirmeta", 1, "EPERM"), ItemError(".fsclone-links.x", "cleanup", 1,
                                                                 "EPERM")]
    seed = seed_for(errors, "copy", dir_slice=1)
    entries = sorted((c.path, c.names) for c in seed.chunks if c.op == "copy")
    assert entries == [("", ("top",)), ("a/b", ("f1",)), ("a/b", ("f2",))]
    groups = {g.then.path: g for g in seed.groups}
    assert groups["a/b"].size == 2 and groups["a/b"].then.op == "dirmeta"
    assert groups[""].size == 1
    # a/b's dirmeta error is covered by its barrier; c's is re-run on its own
    assert [(c.op, c.path) for c in seed.chunks if c.op == "dirmeta"] == [("dirmeta", "c")]
    assert all(c.group == groups[c.path].id for c in seed.chunks if c.op == "copy")


def test_retry_seed_of_a_root_failure_is_the_whole_tree() -> None:
    seed = seed_for([ItemError("a/f", "copy", 13, "x"), ItemError(".", "copy", 13, "x")], "copy",
                    dir_slice=10)
    assert [(c.op, c.path, c.names) for c in seed.chunks] == [("copy", "", None)]
    assert seed.groups == []
