"""``--bwlimit`` and ``--max-rate``: limits of the whole pass, however many workers serve it."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

import pytest

from fsclone.chunk import Chunk, Result
from fsclone.config import Config
from fsclone.engine.coordinator import Hooks
from fsclone.engine.launch import PassRequest, run_pass
from fsclone.options import OPTIONS
from fsclone.transport.memory import MemoryBroker, MemoryTransport
from tests.clirun import fsclone
from tests.fstree import assert_same_tree
from tests.midpass import many_files


@pytest.mark.parametrize(("option", "given", "rate"), [
    ("bwlimit", "100M", 100 << 20), ("bwlimit", "10k", 10 << 10), ("bwlimit", "1.5K", 1536),
    ("bwlimit", "4096", 4096), ("max_rate", "10k", 10_000), ("max_rate", "250", 250),
    ("max_rate", "2.5M", 2_500_000)])
def test_a_rate_takes_a_suffix(option: str, given: str, rate: float) -> None:
    assert OPTIONS[option].parse(given) == rate


@pytest.mark.parametrize("given", ["10x", "0", "-5M", "inf", "nan", "M", ""])
def test_a_rate_that_is_none_is_refused(tmp_path: Path, given: str) -> None:
    with pytest.raises(ValueError):
        OPTIONS["bwlimit"].parse(given)
    proc = fsclone("pass", "copy", "--bwlimit", given, tmp_path, tmp_path / "dst",
                   state=tmp_path / "state")
    assert proc.returncode == 2 and b"--bwlimit" in proc.stderr
    assert not (tmp_path / "dst").exists()


def _timed(*args: str | Path, state: Path) -> float:
    started = time.monotonic()
    proc = fsclone("pass", "copy", "-w", "4", *args, state=state)
    assert proc.returncode == 0, proc.stderr
    return time.monotonic() - started


@pytest.mark.parametrize(("flags", "least"), [
    # 16 MiB at 4 MiB/s: at least 4 s
    (("--bwlimit", "4M"), 4.0),
    # 8 directories of 40 files, and the 8 directories: 328 entries at 100 a second
    (("--max-rate", "100"), 3.28)], ids=["bwlimit", "max-rate"])
def test_a_limited_pass_keeps_to_its_limit_with_every_worker_busy(
        tmp_path: Path, flags: tuple[str, str], least: float) -> None:
    """Four workers, each on its own directory: together they keep under the limit (each
    alone would take the whole of it), and the same pass without the limit is far faster."""
    src = many_files(tmp_path / "src", dirs=8, files=40, size=52429)
    state = tmp_path / "state"
    limited = _timed(*flags, src, tmp_path / "limited", state=state)
    assert limited >= least * 0.95, limited
    assert_same_tree(src, tmp_path / "limited")
    free = _timed(src, tmp_path / "free", state=state)
    assert free < limited / 2, (free, limited)
    assert_same_tree(src, tmp_path / "free")


class _Counting(MemoryTransport):
    """Counts the chunks handed to the workers and not answered yet."""

    def __init__(self, broker: MemoryBroker) -> None:
        super().__init__(broker)
        self.out = self.most = 0

    def submit(self, chunks: Iterable[Chunk]) -> None:
        handed = list(chunks)
        self.out += len(handed)
        self.most = max(self.most, self.out)
        super().submit(handed)

    def poll(self, timeout: float) -> list[Result]:
        results = super().poll(timeout)
        self.out -= len(results)
        return results


@pytest.mark.parametrize(("limit", "most"), [(1e9, 2), (None, 10)], ids=["limited", "free"])
def test_under_a_limit_the_coordinator_runs_one_chunk_a_slot(
        tmp_path: Path, limit: float | None, most: int) -> None:
    """Six worker threads serve a pass of two slots (``--workers 2``, as a broker's
    standalone workers may outnumber those the pass was started with): only two chunks are
    out at once, so the shares add up to the limit. Without a limit every chunk goes out."""
    src = many_files(tmp_path / "src", dirs=10, files=2, size=64)
    transport = _Counting(MemoryBroker(workers=6))
    cfg = Config(workers=2, state_dir=str(tmp_path / "state"), max_rate=limit)
    _, summary = run_pass(cfg, PassRequest(op="copy", src=str(src), dst=str(tmp_path / "dst")),
                          Hooks(), transport)
    assert summary.status == "done"
    assert transport.most == most
    assert_same_tree(src, tmp_path / "dst")
