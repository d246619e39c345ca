"""PassSpec: everything a worker needs to know about the pass it serves, fixed at pass start."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from fsclone.errors import MessageError


@dataclass(frozen=True)
class PassSpec:
    """The options of one pass. ``started`` is the clock every age filter is measured against,
    so all workers on all nodes agree on what "a day old" means."""

    id: str
    op: str
    src: str
    dst: str
    started: float
    dry_run: bool = False
    checksum: bool = False
    modify_window_ns: int = 0
    oldest: int | None = None
    newest: int | None = None
    excludes: tuple[str, ...] = ()
    includes: tuple[str, ...] = ()
    large_file_size: int = 64 << 20
    range_size: int = 64 << 20
    dir_slice: int = 5000
    sample: float = 1.0
    seed: int = 0
    metadata_only: bool = False
    manifest: bool = False  # verify: results carry manifest rows for the coordinator to write
    verbose: bool = False
    #: the pass whose failed items this pass re-runs (``--retry-errors``), else ""
    retry_of: str = ""
    #: ``--one-file-system``: directories on another device than SRC's root are skipped
    one_file_system: bool = False
    #: the source's mount points as the passes on it saw them (relative; "" is SRC itself):
    #: a directory among them that is no mount point now plans no deletion (ops.mountguard)
    source_mounts: tuple[str, ...] = ()

    def to_wire(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_wire(cls, data: Any) -> PassSpec:
        try:
            fields = {f.name for f in dataclasses.fields(cls)}
            values = {k: v for k, v in dict(data).items() if k in fields}
            values["excludes"] = tuple(values.get("excludes", ()))
            values["includes"] = tuple(values.get("includes", ()))
            values["source_mounts"] = tuple(values.get("source_mounts", ()))
            return cls(**values)
        except (TypeError, ValueError) as exc:
            raise MessageError(f"malformed pass spec: {exc}") from exc
