"""How big a source tree is, as the last full walk of it counted: the basis of ``status``'s ETA.

``fsclone scan SRC``, and every copy or sync pass that walked the whole tree to the end, leave the
tree's counters in ``<state dir>/trees/<hash of the source path>.json``. A later pass on the same
source compares its progress with that count.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from fsclone.lifecycle import DONE
from fsclone.pathkey import path_key
from fsclone.spec import PassSpec
from fsclone.state.directory import write_private_json
from fsclone.stats import counters as C

#: ops whose SCANNED counts every entry of the source (excluded ones included, not below them)
FULL_WALK_OPS = ("copy", "sync", "scan")
#: ops whose SCANNED, at the end of the walk, is the tree's entries: progress in percent
SIZED_OPS = (*FULL_WALK_OPS, "verify")


@dataclass(frozen=True)
class TreeTotal:
    src: str
    pass_id: str
    when: float
    counters: dict[str, int]

    @property
    def entries(self) -> int:
        return self.counters.get(C.SCANNED, 0)


def _path(state_dir: Path, src: str) -> Path:
    key = path_key(src)
    return state_dir / "trees" / f"{key}.json"


def record_tree(state_dir: Path, spec: PassSpec, status: str, counters: dict[str, int]) -> None:
    """Keep the counters of a pass that walked the whole source tree to the end."""
    whole = spec.op in FULL_WALK_OPS and not spec.retry_of and not spec.changes \
        and spec.sample >= 1.0
    if status != DONE or not whole or not counters.get(C.SCANNED):
        return
    write_private_json(_path(state_dir, spec.src), {"src": spec.src, "pass": spec.id,
                                                    "when": time.time(), "counters": counters})


def expected_entries(state_dir: Path, op: str, src: str, pass_id: str) -> int | None:
    """The entries a pass ``pass_id`` of ``op`` on ``src`` will have scanned at the end of its
    walk, as an earlier full walk counted them; None when unknown, or when its walk counts
    something else (delete walks the target, mtime directories only)."""
    total = tree_total(state_dir, src) if op in SIZED_OPS else None
    return total.entries or None if total and total.pass_id != pass_id else None


def tree_total(state_dir: Path, src: str) -> TreeTotal | None:
    try:
        data = json.loads(_path(state_dir, src).read_text())
    except (OSError, ValueError):
        return None
    return TreeTotal(data["src"], data["pass"], data["when"], data["counters"])
