"""What a person sees of a running pass: a live progress line on a terminal, then the summary,
or JSON for scripts."""

from __future__ import annotations

import json
import sys
import time
from typing import TextIO

from fsclone.cli.display.itemerrors import error_brief, error_json
from fsclone.lifecycle import Summary
from fsclone.stats import counters as C
from fsclone.text import printable

#: summary lines, in order: counter, label
_SUMMARY = [
    (C.SCANNED, "entries scanned"), (C.COPIED, "files copied"), (C.BYTES, "bytes copied"),
    (C.CREATED, "dirs, links and specials made"), (C.UPDATED, "metadata updated"),
    (C.SAME, "unchanged"), (C.PLANNED_DELETES, "planned for deletion"), (C.DELETED, "deleted"),
    (C.TYPE_CHANGED, "type changed (directory <-> non-directory)"),
    (C.SKIP_NEWER, "skipped: newer than --newest"), (C.SKIP_OLDER, "skipped: older than --oldest"),
    (C.SKIP_EXCLUDED, "skipped: excluded"),
    (C.SKIP_MOUNTS, "skipped: other filesystems (--one-file-system)"),
    (C.CHANGED, "changed during copy (next pass)"),
    (C.TIMES_CLAMPED, "times the target cannot hold"),
    (C.VERIFIED, "files verified"), (C.HASHED, "bytes hashed"), (C.MISMATCHES, "mismatches"),
    (C.ERRORS, "errors"),
]


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


class Console:
    """Progress on stderr when it is a terminal; actions and the summary on stdout."""

    def __init__(self, quiet: bool, as_json: bool, stream: TextIO | None = None) -> None:
        self.quiet = quiet
        self.as_json = as_json
        self.err = stream or sys.stderr
        self.live = not quiet and not as_json and self.err.isatty()
        self.started = time.monotonic()
        self._line = False

    def progress(self, counters: dict[str, int], outstanding: int) -> None:
        if not self.live:
            return
        secs = max(time.monotonic() - self.started, 1e-6)
        verifying = C.VERIFIED in counters
        files = counters.get(C.VERIFIED if verifying else C.COPIED, 0)
        data = counters.get(C.HASHED if verifying else C.BYTES, 0)
        line = (f"{counters.get(C.SCANNED, 0):,} scanned, {files:,} files "
                f"{human_bytes(data)} {'verified' if verifying else 'copied'} "
                f"({files / secs:,.0f} files/s, {human_bytes(data / secs)}/s), "
                + (f"{counters.get(C.MISMATCHES, 0)} mismatches, " if verifying else "")
                + f"{counters.get(C.ERRORS, 0)} errors, {outstanding} chunks to go")
        self.err.write("\r\x1b[K" + line)
        self.err.flush()
        self._line = True

    def _clear(self) -> None:
        if self._line:
            self.err.write("\r\x1b[K")
            self._line = False

    def action(self, line: str) -> None:
        if not self.as_json:
            self._clear()
            print(line, flush=True)

    def note(self, line: str) -> None:
        if not self.quiet and not self.as_json:
            self._clear()
            print(f"fsclone: {line}", file=self.err, flush=True)

    def warn(self, line: str) -> None:
        """Something an operator should know even with --json (a stats service went down)."""
        if not self.quiet:
            self._clear()
            print(f"fsclone: {line}", file=self.err, flush=True)

    def summary(self, pass_id: str, op: str, summary: Summary, dry_run: bool,
                notes: list[str] | None = None) -> None:
        """``notes``: lines saying how the pass was partial by design (a sampled verify)."""
        self._clear()
        notes = notes or []
        if self.as_json:
            print(json.dumps({
                "pass": pass_id, "op": op, "status": summary.status, "dry_run": dry_run,
                "elapsed": round(summary.elapsed, 3), "counters": summary.counters,
                "errors": [error_json(e) for e in summary.errors],
                "error_count": summary.error_count, **({"notes": notes} if notes else {}),
                **({"skipped": [printable(p) for p in summary.skipped]}
                   if summary.skipped else {})}))
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
        lines = [head] + [f"  {note}" for note in notes] + [
            f"  {label:32} {human_bytes(c[key]) if key in (C.BYTES, C.HASHED) else f'{c[key]:,}'}"
            for key, label in _SUMMARY if c.get(key)]
        if summary.errors:
            lines.append("  first errors (all in `fsclone errors " + pass_id + "`):")
            lines += [f"    {error_brief(e)}" for e in summary.errors[:10]]
        print("\n".join(lines), file=sys.stdout if not self.quiet else self.err, flush=True)

