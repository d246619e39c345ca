"""How many chunks a local pass keeps in flight: the cores on a local filesystem, enough to
cover the latency where every request is a round trip; run as threads inside the workers."""

from __future__ import annotations

import os
from pathlib import Path

from fsclone.state.queries import read_workers
from fsclone.transport.depth import MAX_DEPTH, MAX_PER_CORE, MIN_PER_CORE, choose_depth, depth
from tests.clirun import fsclone_json
from tests.fstree import assert_same_tree


def test_a_fast_local_filesystem_gets_a_chunk_per_core() -> None:
    assert depth("tmpfs", 0.4, 2) == 2
    assert depth("ext4", 3.0, 16) == 16
    assert depth("other", 5.0, 4) == 4  # a kind without rules, answering fast


def test_round_trips_get_enough_in_flight_to_cover_the_latency() -> None:
    shallow = depth("fuse", 100, 2)
    assert 2 < shallow < depth("fuse", 300, 2)  # deeper the slower the request
    assert depth("other", 300, 2) == depth("fuse", 300, 2)  # measured slow: a round trip


def test_a_remote_filesystem_is_deep_even_where_its_cache_answered_the_probe() -> None:
    assert depth("lustre", 1.0, 2) == MIN_PER_CORE * 2
    assert depth("nfs", 0.5, 1) == MIN_PER_CORE


def test_the_depth_has_bounds_per_core_and_per_machine() -> None:
    assert depth("gpfs", 100_000, 2) == MAX_PER_CORE * 2
    assert depth("lustre", 100_000, 64) == MAX_DEPTH


def test_an_asked_depth_is_spread_over_the_workers_as_threads(tmp_path: Path) -> None:
    chosen = choose_depth(5, 2, 2, (str(tmp_path), str(tmp_path / "not-yet")))
    assert (chosen.workers, chosen.threads, chosen.in_flight) == (2, 3, 6)
    assert choose_depth(1, 4, 2, (str(tmp_path), str(tmp_path))).in_flight == 4


def test_the_roots_are_probed_a_target_not_made_yet_on_its_parent(tmp_path: Path) -> None:
    chosen = choose_depth(None, 2, 2, (str(tmp_path), str(tmp_path / "not" / "yet")))
    assert "source" in chosen.why and "target" in chosen.why
    assert "not probed" not in chosen.why


def test_threads_in_the_workers_copy_the_tree_and_the_summary_names_the_depth(
        tmp_path: Path) -> None:
    src, dst, state = tmp_path / "src", tmp_path / "dst", tmp_path / "state"
    for d in range(24):
        (src / f"d{d}").mkdir(parents=True)
        for f in range(20):
            (src / f"d{d}" / f"f{f}").write_bytes(os.urandom(f * 37))
    rc, out = fsclone_json("pass", "copy", "--depth", "6", "-w", "2", src, dst, state=state)
    assert rc == 0, out
    assert out["concurrency"] == {"depth": 6, "workers": 2, "threads": 3,
                                  "why": "as asked (--depth)"}
    assert_same_tree(src, dst)
    # every thread runs chunks under a name of its own: more names than processes
    assert len(read_workers(state / str(out["pass"]))) > 2
