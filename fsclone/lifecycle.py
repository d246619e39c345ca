"""The words a pass's life is told in: its phases, its statuses and the summary it ends with.

On the ground floor, so that the engine that lives them, the record that keeps them, the sinks
that report them and the CLI that shows them all say them alike, none importing another.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fsclone.chunk import ItemError

#: the phases of each pass, in order
PHASES: dict[str, tuple[str, ...]] = {
    "copy": ("walk", "cleanup"),
    "sync": ("walk", "unlink", "cleanup"),
    "delete": ("walk", "unlink"),
    "mtime": ("walk",),
    "verify": ("walk",),
    "scan": ("walk",),
}

RUNNING, DONE, INTERRUPTED, REFUSED = "running", "done", "interrupted", "refused"
#: an unfinished pass a new pass on its target took the place of: never resumed
SUPERSEDED = "superseded"
#: the statuses of a pass that can be resumed
UNFINISHED = (RUNNING, INTERRUPTED)


def phase_name(op: str, index: int) -> str:
    """The name of phase ``index`` of an ``op`` pass, "end" once past the last one."""
    phases = PHASES.get(op, ())
    return phases[index] if index < len(phases) else "end"


@dataclass
class Summary:
    """How a pass ended: what the coordinator returns and the CLI prints. ``counters`` are the
    pass's totals, over all its runs; ``elapsed`` is this run's seconds, ``active`` those of all
    ``runs``, and ``earlier`` the counters the pass had when this run started (a resume)."""

    status: str
    counters: dict[str, int]
    errors: list[ItemError] = field(default_factory=list)
    error_count: int = 0
    elapsed: float = 0.0
    runs: int = 1
    active: float = 0.0
    earlier: dict[str, int] = field(default_factory=dict)
    #: the first source directories the pass left on purpose (``--one-file-system``); the
    #: record's ``skipped`` table holds them all
    skipped: list[str] = field(default_factory=list)
    #: the file listing the HSM-released files the pass left unread ("" for none)
    released: str = ""
