"""``--log-file``: what fsclone prints, also appended to a file, one timestamped line each.

The pass's output streams are teed: every complete line written to stdout or stderr (notes,
errors, the summary, the line an interrupted run ends with, which ``fsclone.cli.main`` prints)
also goes to the log, so no line is written in two places by hand. The terminal's live
progress line never ends with a newline (the next write wipes it with a carriage return), so it
stays off the log; the console writes a progress line there every ``--progress`` seconds.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from typing import Any, TextIO

from fsclone.manifest import check_location
from fsclone.private import append_private


class LogFile:
    """An open log: lines go out with a UTC timestamp, each in one ``write`` (O_APPEND: lines
    of two runs sharing a log do not interleave within a line)."""

    def __init__(self, path: str, roots: tuple[str, ...]) -> None:
        check_location(path, roots, "the log file")
        self.path = path
        self.fd = append_private(path, "log file")

    def line(self, text: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        os.write(self.fd, f"{stamp} {text}\n".encode(errors="backslashreplace"))


class Tee:
    """A text stream that also hands each complete line to a log."""

    def __init__(self, stream: TextIO, log: LogFile) -> None:
        self.stream = stream
        self.log = log
        self._partial = ""

    def write(self, text: str) -> int:
        written = self.stream.write(text)
        *lines, rest = (self._partial + text).split("\n")
        for line in lines:
            kept = line.rpartition("\r")[2]  # what a carriage return overwrote is gone
            if kept.strip():
                self.log.line(kept)
        self._partial = rest.rpartition("\r")[2]
        return written

    def __getattr__(self, name: str) -> Any:  # flush, isatty, fileno...: the stream's
        return getattr(self.stream, name)


def open_log(path: str, roots: tuple[str, ...]) -> LogFile:
    """The log at ``path`` (refused inside a pass root), opened with a line naming the command;
    from now on what this process prints on stdout and stderr also goes there."""
    log = LogFile(path, roots)
    log.line(f"fsclone {shlex.join(sys.argv[1:])} (pid {os.getpid()})")
    sys.stdout = Tee(sys.stdout, log)
    sys.stderr = Tee(sys.stderr, log)
    return log
