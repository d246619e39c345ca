"""What a person sees of a running pass: a live progress line on a terminal, then the summary,
or JSON for scripts."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TextIO

from fsclone.cli.display.itemerrors import error_brief, error_json
from fsclone.cli.display.logfile import LogFile
from fsclone.cli.display.progress import Mark, Progress, Window, per_second, rates
from fsclone.cli.display.render import human_bytes
from fsclone.fsprofile import Profiles
from fsclone.lifecycle import Summary
from fsclone.spec import PassSpec
from fsclone.state.trees import expected_entries
from fsclone.stats import counters as C
from fsclone.text import printable
from fsclone.transport.depth import Concurrency

#: summary lines, in order: counter, label
_SUMMARY = [
    (C.SCANNED, "entries scanned"), (C.COPIED, "files copied"), (C.BYTES, "bytes copied"),
    (C.CREATED, "dirs, links and specials made"), (C.MOVED, "files renamed as in the source"),
    (C.UPDATED, "metadata updated"),
    (C.SAME, "unchanged"), (C.PLANNED_DELETES, "planned for deletion"), (C.DELETED, "deleted"),
    (C.TYPE_CHANGED, "type changed (directory <-> non-directory)"),
    (C.SKIP_NEWER, "skipped: newer than --newest"), (C.SKIP_OLDER, "skipped: older than --oldest"),
    (C.SKIP_EXCLUDED, "skipped: excluded"),
    (C.SKIP_MOUNTS, "skipped: other filesystems (--one-file-system)"),
    (C.RELEASED, "skipped: HSM-released (not read)"),
    (C.CHANGED, "changed during copy (next pass)"),
    (C.TIMES_CLAMPED, "times the target cannot hold"),
    (C.VERIFIED, "files verified"), (C.HASHED, "bytes hashed"), (C.MISMATCHES, "mismatches"),
    (C.ERRORS, "errors"),
]


#: seconds the live line's rate is over (it is redrawn twice a second)
LIVE_WINDOW = 5.0


class Console:
    """Progress on stderr: a live line when it is a terminal, else a line every ``every``
    seconds (0: none); actions and the summary on stdout. With a ``log``, the progress lines
    go there too (the rest reaches it through the teed streams, see logfile)."""

    def __init__(self, quiet: bool, as_json: bool, stream: TextIO | None = None,
                 every: float = 0.0, log: LogFile | None = None,
                 state_dir: Path | None = None) -> None:
        self.quiet = quiet
        self.as_json = as_json
        self.err = stream or sys.stderr
        self.live = not quiet and not as_json and self.err.isatty()
        self.every = every
        self.log = log
        self.state_dir = state_dir
        self._line = False
        self._run: Progress | None = None
        self._window: Window | None = None
        self._last = Mark(0.0, {})  # the last periodic line's
        self._next = 0.0

    def start(self, spec: PassSpec, counters: dict[str, int]) -> None:
        """A run of pass ``spec`` starts with ``counters`` (a resumed pass's are not 0)."""
        expected = (expected_entries(self.state_dir, spec.op, spec.src, spec.id)
                    if self.state_dir else None)
        self._begin(Mark(time.monotonic(), dict(counters)), expected)

    def _begin(self, mark: Mark, expected: int | None) -> None:
        self._run = Progress(mark, expected)
        self._window = Window(LIVE_WINDOW, mark)
        self._last = mark
        self._next = mark.at + self.every

    def progress(self, counters: dict[str, int], outstanding: int) -> None:
        """Called every half second while a phase runs."""
        now = Mark(time.monotonic(), dict(counters))
        if self._run is None:  # no start was said: rates from here, no size known
            self._begin(now, None)
        assert self._run is not None and self._window is not None
        if self.live:
            self.err.write("\r\x1b[K" + self._run.line(now, self._window.add(now), outstanding))
            self.err.flush()
            self._line = True
        if self.every and now.at >= self._next:
            line = f"progress: {self._run.line(now, self._last, outstanding)}"
            self._last, self._next = now, now.at + self.every
            if not self.live and not self.quiet:
                self.note(line, always=True)  # the log has it through the teed stderr
            elif self.log is not None:
                self.log.line(f"fsclone: {line}")

    def _clear(self) -> None:
        if self._line:
            self.err.write("\r\x1b[K")
            self._line = False

    def action(self, line: str) -> None:
        if not self.as_json:
            self._clear()
            print(line, flush=True)

    def note(self, line: str, always: bool = False) -> None:
        """A line on stderr, unless -q, or --json without ``always``."""
        if not self.quiet and (always or not self.as_json):
            self._clear()
            print(f"fsclone: {line}", file=self.err, flush=True)

    def warn(self, line: str) -> None:
        """Something an operator should know even with --json (a stats service went down)."""
        if not self.quiet:
            self._clear()
            print(f"fsclone: {line}", file=self.err, flush=True)

    def summary(self, pass_id: str, op: str, summary: Summary, dry_run: bool,
                notes: list[str] | None = None, profile: Profiles | None = None,
                concurrency: Concurrency | None = None) -> None:
        """``notes``: lines saying how the pass was partial by design (a sampled verify);
        ``profile``: what the pass found of its filesystems, a line a side; ``concurrency``:
        the depth a local pass ran at, and why."""
        self._clear()
        notes = notes or []
        run, before = run_marks(summary)
        verifying = C.VERIFIED in summary.counters
        if self.as_json:
            print(json.dumps({
                "pass": pass_id, "op": op, "status": summary.status, "dry_run": dry_run,
                "elapsed": round(summary.active, 3), "runs": summary.runs,
                "counters": summary.counters,
                "run": {"elapsed": round(summary.elapsed, 3),
                        "counters": {k: v - before.counters.get(k, 0)
                                     for k, v in summary.counters.items()
                                     if v != before.counters.get(k, 0)},
                        "rates": per_second(run, before, verifying)},
                "errors": [error_json(e) for e in summary.errors],
                "error_count": summary.error_count, **({"notes": notes} if notes else {}),
                **({"profile": profile.to_wire()} if profile else {}),
                **({"concurrency": concurrency.as_json()} if concurrency else {}),
                **({"skipped": [printable(p) for p in summary.skipped]}
                   if summary.skipped else {}),
                **({"released": summary.released} if summary.released else {})}))
            return
        c = summary.counters
        if c.get(C.CHANGED):  # the pass did not get everything over: said even under -q
            n = c[C.CHANGED]
            print(f"fsclone: {n:,} {'file' if n == 1 else 'files'} changed while being copied "
                  "and did not go over: run the pass again", file=self.err, flush=True)
        if c.get(C.TIMES_CLAMPED) and not self.quiet:
            print(f"fsclone: warning: {c[C.TIMES_CLAMPED]:,} entries have times the target "
                  "filesystem cannot hold; they are kept at its limit and not taken for changes",
                  file=self.err, flush=True)
        if self.quiet and not (summary.error_count or summary.counters.get(C.MISMATCHES)):
            return
        head = f"pass {pass_id}: {op}{' (dry run)' if dry_run else ''} {summary.status} " \
               f"in {summary.elapsed:.1f}s"
        speed = rates(run, before, verifying)
        if summary.runs > 1:  # resumed: this run beside the whole pass, whose totals follow
            lines = [f"{head} this run ({speed}); {summary.active:.1f}s over its "
                     f"{summary.runs} runs, whose totals follow"]
        else:
            lines = [f"{head} ({speed})"]
        lines += [f"  {line}" for line in profile.lines()] if profile else []
        lines += [f"  {note}" for note in notes]
        if concurrency is not None and concurrency.threads > 1:  # deeper than the workers
            lines.append(f"  {concurrency}")
        lines += [
            f"  {label:32} {human_bytes(c[key]) if key in (C.BYTES, C.HASHED) else f'{c[key]:,}'}"
            for key, label in _SUMMARY if c.get(key)] + _layout_lines(c)
        if summary.released:
            lines.append(f"  HSM-released files left unread are listed in {summary.released}")
        if summary.errors:
            lines.append("  first errors (all in `fsclone errors " + pass_id + "`):")
            lines += [f"    {error_brief(e)}" for e in summary.errors[:10]]
        print("\n".join(lines), file=sys.stdout if not self.quiet else self.err, flush=True)



def _layout_lines(counters: dict[str, int]) -> list[str]:
    """One line per Lustre layout kind left with the target's default, however many files."""
    return [f"  {'default layout: ' + key.removeprefix(C.LAYOUT_DEFAULT):32} {n:,}"
            for key, n in sorted(counters.items()) if key.startswith(C.LAYOUT_DEFAULT)]


def run_marks(summary: Summary) -> tuple[Mark, Mark]:
    """This run's end and start, as marks: its rates are over this run alone."""
    return Mark(summary.elapsed, summary.counters), Mark(0.0, summary.earlier)
