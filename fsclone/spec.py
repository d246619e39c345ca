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
    #: the delete guards: refuse to delete more than this many entries; refuse to delete at
    #: all unless the source root holds this name
    max_delete: int | None = None
    sentinel: str | None = None
    #: ``--one-file-system``: directories on another device than SRC's root are skipped
    one_file_system: bool = False
    #: the source's mount points as the passes on it saw them (relative; "" is SRC itself):
    #: a directory among them that is no mount point now plans no deletion (ops.mountguard).
    #: Not an option: what the pass found at its start, kept for a resume
    source_mounts: tuple[str, ...] = ()

    @property
    def rehearsal(self) -> bool:
        """A dry run of a pass that would write: it leaves nothing to resume. (A scan is a
        dry run by nature, and resumable.)"""
        return self.dry_run and self.op != "scan"

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


#: the options that shape a pass's result, with the flag that spells each: a resume must be
#: asked with the same ones (see :func:`differences`)
REQUEST_FLAGS: dict[str, str] = {
    "dry_run": "--dry-run", "checksum": "--checksum", "modify_window_ns": "--modify-window",
    "oldest": "--oldest", "newest": "--newest", "excludes": "--exclude",
    "includes": "--include", "max_delete": "--max-delete", "sentinel": "--sentinel",
    "sample": "--sample", "seed": "--seed", "metadata_only": "--metadata-only",
    "one_file_system": "--one-file-system",
}


def _request_value(spec: PassSpec, name: str) -> Any:
    """One option in a form that compares by meaning: globs as a set (order and repeats do not
    matter, and the site's EXCLUDES come in again as flags), an age of 0 as no age."""
    value = getattr(spec, name)
    if name in ("excludes", "includes"):
        return tuple(sorted(set(value)))
    if name in ("oldest", "newest"):
        return value or None
    return value


def differences(stored: PassSpec, asked: PassSpec) -> list[str]:
    """The options a pass was started with that differ from those asked now, as flags."""
    return [REQUEST_FLAGS[name] for name in REQUEST_FLAGS
            if _request_value(stored, name) != _request_value(asked, name)]


def as_flags(spec: PassSpec) -> list[str]:
    """The options of ``spec`` that are not the defaults, spelled as command-line flags."""
    flags: list[str] = []
    for name, flag in REQUEST_FLAGS.items():
        value = _request_value(spec, name)
        if value in (None, False, (), 0) or (name == "sample" and value == 1.0):
            continue
        if value is True:
            flags.append(flag)
        elif name in ("excludes", "includes"):
            flags += [part for glob in value for part in (flag, glob)]
        elif name == "modify_window_ns":
            flags += [flag, f"{value / 1e9:g}"]
        elif name in ("oldest", "newest"):
            flags += [flag, f"{value}s"]
        else:
            flags += [flag, str(value)]
    return flags
