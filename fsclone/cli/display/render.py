"""``fsclone status`` and ``fsclone scan`` as text: one block per pass, one pass with its hosts
and workers, a tree's counts and size histogram."""

from __future__ import annotations

import time
from collections import defaultdict
from typing import TYPE_CHECKING

from fsclone.stats import counters as C
from fsclone.text import printable

if TYPE_CHECKING:  # a pass's progress line needs only the helpers: not status's readers
    from fsclone.cli.display.views import PassView, WorkerView
    from fsclone.state.watch import WatchStatus

#: the per-worker table: heading, counter or rate key, width
_COLUMNS = (("scanned", C.SCANNED, 13), ("files", C.COPIED, 11), ("bytes", C.BYTES, 11),
            ("files/s", "rate:" + C.COPIED, 9), ("bytes/s", "rate:" + C.BYTES, 11),
            ("errors", C.ERRORS, 7), ("chunks", C.CHUNKS, 9))


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


def duration(secs: float) -> str:
    if secs < 10:
        return f"{secs:.1f}s"
    secs = int(secs)
    if secs < 60:
        return f"{secs}s"
    if secs < 3600:
        return f"{secs // 60}m{secs % 60:02d}s"
    days, rest = divmod(secs, 86400)
    text = f"{rest // 3600}h{rest % 3600 // 60:02d}m"
    return f"{days}d{text}" if days else text


def _state(view: PassView) -> str:
    return f"{view.snap.status} ({view.snap.phase})" if view.running else view.snap.status


def _progress(view: PassView) -> str:
    c = view.snap.counters
    scanned = f"{c.get(C.SCANNED, 0):,} scanned"
    if view.fraction is not None and view.running:
        scanned += f" ({view.fraction * 100:.1f}% of {view.expected:,})"
    if view.snap.op == "scan":
        return f"{scanned}, {human_bytes(c.get(C.SIZE, 0))} in {c.get(C.FILES, 0):,} files"
    if view.snap.op == "verify":
        return f"{scanned}, {c.get(C.VERIFIED, 0):,} files verified, " \
               f"{c.get(C.MISMATCHES, 0):,} mismatches"
    return f"{scanned}, {c.get(C.COPIED, 0):,} files {human_bytes(c.get(C.BYTES, 0))} copied"


def _rates(view: PassView) -> str:
    r = view.rates
    if view.snap.op == "scan":
        return f"{r.get(C.SCANNED, 0):,.0f} entries/s"
    return f"{r.get(C.SCANNED, 0):,.0f} entries/s, {r.get(C.COPIED, 0):,.0f} files/s, " \
           f"{human_bytes(r.get(C.BYTES, 0))}/s"


def _eta(view: PassView) -> str:
    if view.eta is not None:
        return f"ETA {duration(view.eta)}"
    if view.running and view.expected is None:
        return "ETA unknown (no count of this tree yet: `fsclone scan SRC`)"
    return f"took {duration(view.elapsed)}{_runs(view)}" if not view.running else ""


def _runs(view: PassView) -> str:
    """" over 2 runs (the last 0.3s)", for a pass that was resumed."""
    last = view.last_run
    return "" if last is None else f" over {view.snap.runs} runs (the last {duration(last)})"


def pass_lines(view: PassView) -> list[str]:
    """Two lines: what the pass is, and where it stands."""
    s = view.snap
    retry = f" (retrying errors of {s.retry_of})" if s.retry_of else ""
    dst = f" -> {printable(s.dst)}" if s.dst else ""
    head = f"{s.pass_id}  {s.op}{retry}  {_state(view)}  {printable(s.src)}{dst}"
    body = f"    {_progress(view)}; {_rates(view)}; {view.errors:,} errors; {_eta(view)}"
    return [head, body.rstrip("; ")]


def list_lines(views: list[PassView], watchers: list[WatchStatus] | None = None) -> list[str]:
    """Every watcher, then every pass."""
    lines = [line for w in watchers or [] for line in watcher_lines(w, time.time())]
    if not views:
        return [*lines, "no passes yet"]
    return [*lines, *(line for view in views for line in pass_lines(view))]


def watcher_lines(w: WatchStatus, now: float) -> list[str]:
    """Two lines (three after a gap): the watcher, and how far DST is behind."""
    full = f"last full sync {_clock(w.last_full_sync)}" if w.last_full_sync else \
        "no full sync yet"
    lines = [f"watch  {w.shown_state()}  {printable(w.src)} -> {printable(w.dst)}  "
             f"(pid {w.pid} on {w.host})",
             f"    {w.events:,} events seen; {w.pending:,} directories pending; lag "
             f"{duration(w.lag(now))}; {full}; updated {duration(now - w.updated)} ago"]
    if w.last_gap_at:
        lines.append(f"    events lost at {_clock(w.last_gap_at)} ({w.last_gap}): a full "
                     "sync followed")
    return lines


def _value(worker: dict[str, int], rates: dict[str, float], key: str) -> str:
    if key.startswith("rate:"):
        value = rates.get(key[5:], 0.0)
        return f"{human_bytes(value)}" if key.endswith(C.BYTES) else f"{value:,.0f}"
    return human_bytes(worker.get(key, 0)) if key == C.BYTES else f"{worker.get(key, 0):,}"


def _row(label: str, counters: dict[str, int], rates: dict[str, float]) -> str:
    cells = "".join(f"{_value(counters, rates, key):>{width}}" for _, key, width in _COLUMNS)
    return f"  {label:<22}{cells}"


def _clock(when: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when))


def detail_lines(view: PassView) -> list[str]:
    """The pass, its totals, then each host (its workers summed) and each of its workers."""
    s = view.snap
    when = f"running for {duration(view.elapsed)}{_runs(view)}, updated " \
           f"{duration(time.time() - s.time)} ago" if view.running else \
           f"ended {_clock(s.time)} after {duration(view.elapsed)}{_runs(view)}"
    depth = f", {s.depth:,} queued" if s.depth is not None else ""
    lines = [
        *pass_lines(view),
        f"    coordinator on {s.host}; started {_clock(s.started)}, {when} (from {view.source})",
        f"    {s.outstanding:,} chunks outstanding{depth}",
        *(f"    {line}" for line in (s.profile.lines() if s.profile else ())),
    ]
    if view.errors:
        lines.append(f"    failed items: `fsclone errors {s.pass_id}`")
    lines += ["", "  " + f"{'host / worker':<22}"
              + "".join(f"{head:>{width}}" for head, _, width in _COLUMNS)]
    by_host: dict[str, list[WorkerView]] = defaultdict(list)
    for worker in view.workers:
        by_host[worker.host].append(worker)
    for host, workers in sorted(by_host.items()):
        counters: dict[str, int] = {}
        rates: dict[str, float] = {}
        for w in workers:
            C.add(counters, w.counters)
            for k, v in w.rates.items():
                rates[k] = rates.get(k, 0.0) + v
        lines.append(_row(host, counters, rates))
        lines += [_row("  " + w.name, w.counters, w.rates) for w in workers]
    lines.append(_row("total", view.snap.counters, view.rates))
    return lines


#: scan report lines: label, counter
_SCAN = (("items", C.SCANNED), ("directories", C.DIRS), ("files", C.FILES),
         ("symlinks", C.SYMLINKS), ("others (fifo, socket, device)", C.OTHERS),
         ("hard-linked files", C.HARDLINKS), ("excluded", C.SKIP_EXCLUDED), ("errors", C.ERRORS))


def histogram(counters: dict[str, int]) -> list[tuple[int, int, int]]:
    """(low, high, files) per power-of-2 size bucket [low, high), smallest first."""
    out = []
    for key, files in sorted(counters.items()):
        if key.startswith(C.HIST_PREFIX):
            k = int(key[len(C.HIST_PREFIX):])
            out.append((1 << (k - 1) if k else 0, 1 << k, files))
    return out


def scan_lines(src: str, pass_id: str, status: str, elapsed: float,
               counters: dict[str, int]) -> list[str]:
    """What dwalk prints: counts by type, bytes, and the file size histogram."""
    files = counters.get(C.FILES, 0)
    size = counters.get(C.SIZE, 0)
    lines = [f"scan of {printable(src)}: pass {pass_id} {status} in {duration(elapsed)} "
             f"({counters.get(C.SCANNED, 0) / max(elapsed, 1e-3):,.0f} items/s)"]
    lines += [f"  {label:32}{counters.get(key, 0):>15,}" for label, key in _SCAN]
    per_file = f" ({human_bytes(size / files)} per file)" if files else ""
    lines.append(f"  {'bytes':32}{human_bytes(size):>15}{per_file}")
    buckets = histogram(counters)
    if buckets:
        widest = max(n for _, _, n in buckets)
        lines.append("size histogram of files:")
        lines += [f"  [{human_bytes(low):>10}, {human_bytes(high):>10}) {n:>13,} "
                  + "#" * max(1, round(40 * n / widest)) for low, high, n in buckets]
    return lines
