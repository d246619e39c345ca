"""At-least-once delivery, deterministically: the real Coordinator and PassStore over the
in-memory transport (fsclone.transport.memory), whose broker makes on purpose what real
transports do by accident. Each pass must end with the tree a clean pass makes and the
same counters, exactly."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pytest

from fsclone.chunk import Chunk, Result
from fsclone.config import Config
from fsclone.engine.coordinator import MAX_ATTEMPTS, Hooks, Summary
from fsclone.engine.launch import PassRequest, run_pass
from fsclone.stats import counters as C
from fsclone.transport.memory import CoordinatorKilled, Match, MemoryBroker, MemoryTransport
from tests.fstree import assert_same_tree, leftovers

MIB = 1 << 20
#: the files of each directory of :func:`tree`
SIZES = (100, 101, 102)


def tree(root: Path, big: bool = False) -> Path:
    """A root with files and three directories of files; ``big``: a 3 MiB file at the root,
    copied in three ranges of 1 MiB."""
    for name in ("a", "b", "c"):
        (root / name).mkdir(parents=True)
        for i, size in enumerate(SIZES):
            (root / name / f"f{i}").write_bytes(os.urandom(size))
    (root / "top").write_bytes(b"top")
    if big:
        (root / "big").write_bytes(os.urandom(3 * MIB))
    return root


def copy(src: Path, dst: Path, state: Path, transport: MemoryTransport) -> Summary:
    cfg = Config(workers=1, state_dir=str(state), large_file_size=MIB, range_size=MIB)
    _, summary = run_pass(cfg, PassRequest(op="copy", src=str(src), dst=str(dst)), Hooks(),
                          transport)
    return summary


def clean(tmp_path: Path, src: Path) -> dict[str, int]:
    """The counters of a pass on which nothing went wrong."""
    summary = copy(src, tmp_path / "clean", tmp_path / "clean-state", MemoryTransport())
    assert summary.status == "done" and summary.error_count == 0
    return summary.counters


def assert_clean_end(summary: Summary, expected: dict[str, int], src: Path, dst: Path) -> None:
    """The pass ended as a clean one does: done, no errors, its counters, the same tree and
    nothing of fsclone's own left in it."""
    assert summary.status == "done" and summary.error_count == 0
    assert summary.counters == expected
    assert_same_tree(src, dst)
    assert leftovers(dst) == []


def at(path: str, op: str = "copy") -> Match:
    def match(chunk: Chunk, earlier: int) -> bool:
        return chunk.op == op and chunk.path == path
    return match


def last_range(chunk: Chunk, earlier: int = 0) -> bool:
    return chunk.op == "range" and chunk.args["start"] == 2 * MIB


@pytest.mark.parametrize("how", ["duplicate", "replay"])
def test_a_result_delivered_twice_is_applied_once(tmp_path: Path, how: str) -> None:
    """The same result twice, or a second result of the same chunk run again (a message
    delivered again after its ack)."""
    src, dst = tree(tmp_path / "src"), tmp_path / "dst"
    expected = clean(tmp_path, src)
    broker = MemoryBroker()
    getattr(broker, how)(at("a"))
    summary = copy(src, dst, tmp_path / "state", MemoryTransport(broker))
    assert [r.chunk.path for r in broker.published].count("a") == 2
    assert [c.path for c, _ in broker.deliveries].count("a") == (1 if how == "duplicate" else 2)
    assert summary.status == "done" and summary.error_count == 0
    assert summary.counters == expected
    assert expected[C.COPIED] == 10
    assert_same_tree(src, dst)


def test_a_worker_dying_after_it_published_is_redone_and_its_second_result_ignored(
        tmp_path: Path) -> None:
    src, dst = tree(tmp_path / "src"), tmp_path / "dst"
    expected = clean(tmp_path, src)
    broker = MemoryBroker()
    broker.kill("ack", at("b"))
    summary = copy(src, dst, tmp_path / "state", MemoryTransport(broker))
    # delivered again, and run as a redo (an earlier run may have left temp files)
    assert [(c.redo, earlier) for c, earlier in broker.deliveries if c.path == "b"] == \
        [(False, 0), (False, 1)]
    assert [r.chunk.redo for r in broker.published if r.chunk.path == "b"] == [False, True]
    assert_clean_end(summary, expected, src, dst)


def test_a_lost_result_is_made_good_by_the_redelivery(tmp_path: Path) -> None:
    """b's results are lost on their way: unconfirmed, b is delivered again, and its second
    run (which finds b's files copied) is the one counted."""
    src, dst = tree(tmp_path / "src"), tmp_path / "dst"
    expected = clean(tmp_path, src)
    broker = MemoryBroker()
    broker.drop(at("b"))
    summary = copy(src, dst, tmp_path / "state", MemoryTransport(broker))
    assert [earlier for c, earlier in broker.deliveries if c.path == "b"] == [0, 1]
    b_bytes = sum(SIZES)
    assert summary.error_count == 0
    assert summary.counters == {**expected, C.COPIED: expected[C.COPIED] - 3, C.SAME: 3,
                                C.BYTES: expected[C.BYTES] - b_bytes}
    assert_same_tree(src, dst)


def test_a_barrier_whose_last_member_is_redelivered_after_it_completed(tmp_path: Path) -> None:
    """The last range of a large file is done, published, and its worker dies before the ack:
    the file is finalized, and then the range is delivered again. Its second run (the temp is
    gone: published) is a duplicate; the file stays published, listed nowhere."""
    src, dst = tree(tmp_path / "src", big=True), tmp_path / "dst"
    expected = clean(tmp_path, src)
    broker = MemoryBroker()
    broker.kill("ack", last_range)

    def again(chunk: Chunk, earlier: int) -> bool:
        return earlier > 0

    def dirmeta(chunk: Chunk, earlier: int) -> bool:
        return chunk.op == "dirmeta"

    def order(results: Sequence[Result]) -> None:
        """The redelivery waits for the finalize; the root's times for the redelivery."""
        ops = {r.chunk.op for r in results}
        if "finalize" in ops:
            broker.release(again)
        if "range" in ops and results[0].chunk.redo:
            broker.release(dirmeta)

    broker.hold(again)
    broker.hold(dirmeta)
    broker.on_publish.append(order)
    summary = copy(src, dst, tmp_path / "state", MemoryTransport(broker))
    runs = [(r.chunk.op, r.chunk.redo) for r in broker.published
            if r.chunk.op in ("finalize", "dirmeta") or last_range(r.chunk)]
    assert runs == [("range", False), ("finalize", False), ("range", True), ("dirmeta", False)]
    redone = next(r for r in broker.published if last_range(r.chunk) and r.chunk.redo)
    assert [e.errno for e in redone.errors] == [2], "the redone range found no temp"
    assert_clean_end(summary, expected, src, dst)


def test_a_range_whose_worker_dies_on_every_attempt_is_listed_and_never_published(
        tmp_path: Path) -> None:
    """A broker that dead-letters at the first death: the coordinator retries the range up to
    MAX_ATTEMPTS, then lists it; the file's barrier is failed, so finalize discards the temp."""
    src, dst = tree(tmp_path / "src", big=True), tmp_path / "dst"
    expected = clean(tmp_path, src)
    broker = MemoryBroker(delivery_limit=0)
    broker.kill("receive", last_range, times=None)
    summary = copy(src, dst, tmp_path / "state", MemoryTransport(broker))
    assert [c.attempt for c, _ in broker.deliveries if last_range(c)] == \
        list(range(MAX_ATTEMPTS))
    assert [(e.path, e.op) for e in summary.errors] == [("big", "range")]
    assert f"chunk failed {MAX_ATTEMPTS} times: dead-lettered" in summary.errors[0].message
    assert not (dst / "big").exists(), "a file with a range given up on was published"
    assert leftovers(dst) == []
    assert summary.counters == {**expected, C.COPIED: expected[C.COPIED] - 1,
                                C.BYTES: expected[C.BYTES] - MIB,
                                C.CHUNKS: expected[C.CHUNKS] - 1, C.ERRORS: 1}
    (src / "big").unlink()  # which moves the root's times
    assert_same_tree(src, dst, ignore_root_times=True)


def test_a_resume_applies_the_results_left_in_flight(tmp_path: Path) -> None:
    """The coordinator stops with b's result published and not applied (c not even run); the
    next coordinator on the same record gets that result, and ignores b's second run."""
    src, dst, state = tree(tmp_path / "src"), tmp_path / "dst", tmp_path / "state"
    expected = clean(tmp_path, src)
    broker = MemoryBroker()
    held = at("c")
    broker.hold(held)
    with pytest.raises(CoordinatorKilled):
        copy(src, dst, state, MemoryTransport(
            broker, interrupt=lambda queued: any(r.chunk.path == "b" for r in queued)))
    assert not (dst / "c" / "f0").exists()
    broker.release(held)
    summary = copy(src, dst, state, MemoryTransport(broker))
    assert [r.chunk.redo for r in broker.published if r.chunk.path == "b"] == [False, True]
    assert_clean_end(summary, expected, src, dst)


def test_a_directory_with_a_large_file_redelivered_after_it_published(tmp_path: Path) -> None:
    """The redone run must not discard the temp its first run handed to range chunks, and the
    temp the redone run made itself (its result a duplicate) goes before cleanup."""
    src = tree(tmp_path / "src", big=True)
    expected = clean(tmp_path, src)
    summary = copy_redelivering(tmp_path, src, "")
    assert summary.counters == expected


def copy_redelivering(tmp_path: Path, src: Path, path: str) -> Summary:
    """A copy whose chunk of directory ``path`` is delivered again after it published (its
    worker killed before the ack); it must end clean: no leftovers, no errors, the same tree."""
    dst = tmp_path / "dst"
    broker = MemoryBroker()
    broker.kill("ack", at(path))
    summary = copy(src, dst, tmp_path / "state", MemoryTransport(broker))
    assert [earlier for c, earlier in broker.deliveries if c.path == path and c.op == "copy"] \
        == [0, 1]
    assert leftovers(dst) == []
    assert summary.error_count == 0
    assert_same_tree(src, dst)
    return summary


def test_a_temp_swept_from_a_finished_directory_leaves_its_times_as_the_pass_set_them(
        tmp_path: Path) -> None:
    """The duplicate run of a subdirectory's chunk leaves a temp there after the directory's
    metadata was applied; the sweep before cleanup removes it and puts the times back."""
    src = tree(tmp_path / "src")
    (src / "a" / "big").write_bytes(os.urandom(3 * MIB))
    os.utime(src / "a", ns=(1_000_000_000, 2_000_000_000))
    copy_redelivering(tmp_path, src, "a")
    assert os.stat(tmp_path / "dst" / "a").st_mtime_ns == 2_000_000_000


def test_the_worker_threads_leave_the_cwd_of_the_process_alone(tmp_path: Path) -> None:
    """Reading xattrs fchdir-s into each directory: a worker thread does it in a cwd of its
    own, or every later relative path of the process (``python3 -m fsclone`` in a child, say)
    would resolve in some target directory."""
    src, dst = tree(tmp_path / "src"), tmp_path / "dst"
    before = os.getcwd()
    copy(src, dst, tmp_path / "state", MemoryTransport())
    os.setxattr(src / "a" / "f0", "user.note", b"x")  # so the next pass compares xattrs
    summary = copy(src, dst, tmp_path / "state-again", MemoryTransport())
    assert summary.counters[C.UPDATED] == 1
    assert os.getcwd() == before
