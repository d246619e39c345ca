"""The progress line of a running pass: counts, the rate of the last interval (not the pass
average, which hides a stall or a speed-up for hours), and, when an earlier walk counted the
tree, the percent of it walked and an ETA."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from fsclone.cli.display.render import duration, human_bytes
from fsclone.stats import counters as C

#: what the rates are of: counter, unit
_RATES = ((C.SCANNED, "entries/s"), (C.COPIED, "files/s"), (C.BYTES, "B/s"))
_VERIFY_RATES = ((C.SCANNED, "entries/s"), (C.VERIFIED, "files/s"), (C.HASHED, "B/s"))


@dataclass(frozen=True)
class Mark:
    """The counters at one moment (monotonic seconds)."""

    at: float
    counters: dict[str, int]


def per_second(now: Mark, then: Mark, verifying: bool) -> dict[str, float]:
    """The rates between two marks, of the counters a progress line shows."""
    secs = max(now.at - then.at, 1e-6)
    return {key: round(max(now.counters.get(key, 0) - then.counters.get(key, 0), 0) / secs, 3)
            for key, _ in (_VERIFY_RATES if verifying else _RATES)}


def rates(now: Mark, then: Mark, verifying: bool) -> str:
    """"1,200 entries/s, 800 files/s, 3.1 MiB/s" between two marks."""
    per = per_second(now, then, verifying)
    return ", ".join(f"{human_bytes(per[key])}/s" if unit == "B/s" else f"{per[key]:,.0f} {unit}"
                     for key, unit in (_VERIFY_RATES if verifying else _RATES))


class Progress:
    """One run of a pass, as progress lines. ``expected``: the entries its walk will have
    scanned (None: unknown); ``start``: the counters when the run started (a resumed pass
    does not start at 0)."""

    def __init__(self, start: Mark, expected: int | None) -> None:
        self.start = start
        self.expected = expected

    def percent_eta(self, now: Mark) -> str:
        """"41.2% of 30,000 entries, ETA 1m05s": the ETA at this run's pace, which a stall
        slows gradually rather than making it jump to never."""
        if not self.expected:
            return ""
        scanned = now.counters.get(C.SCANNED, 0)
        text = f"{min(scanned / self.expected, 1.0) * 100:.1f}% of {self.expected:,} entries"
        done = scanned - self.start.counters.get(C.SCANNED, 0)
        if scanned < self.expected and done > 0:
            pace = (now.at - self.start.at) / done
            text += f", ETA {duration((self.expected - scanned) * pace)}"
        return text

    def line(self, now: Mark, then: Mark, outstanding: int) -> str:
        """The line at ``now``, its rates over the interval since ``then``."""
        c = now.counters
        verifying = C.VERIFIED in c
        files = c.get(C.VERIFIED if verifying else C.COPIED, 0)
        data = c.get(C.HASHED if verifying else C.BYTES, 0)
        parts = [f"{c.get(C.SCANNED, 0):,} scanned",
                 f"{files:,} files {human_bytes(data)} {'verified' if verifying else 'copied'}",
                 f"now {rates(now, then, verifying)}"]
        if verifying:
            parts.append(f"{c.get(C.MISMATCHES, 0):,} mismatches")
        parts += [f"{c.get(C.ERRORS, 0):,} errors", f"{outstanding:,} chunks to go"]
        sized = self.percent_eta(now)
        return ", ".join(parts + ([sized] if sized else []))


class Window:
    """The marks of the last ``secs`` seconds, for a rate over a sliding interval (the live
    line is redrawn twice a second: a rate over half a second would flicker)."""

    def __init__(self, secs: float, first: Mark) -> None:
        self.secs = secs
        self.marks: deque[Mark] = deque([first])

    def add(self, mark: Mark) -> Mark:
        """Add ``mark``; returns the oldest mark within the window (the rate's start)."""
        self.marks.append(mark)
        while len(self.marks) > 2 and mark.at - self.marks[1].at >= self.secs:
            self.marks.popleft()
        return self.marks[0]
