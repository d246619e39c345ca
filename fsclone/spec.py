"""PassSpec: everything a worker needs to know about the pass it serves, fixed at pass start."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from fsclone.errors import MessageError
from fsclone.fsprofile import UNKNOWN, Profiles
from fsclone.options import SHAPING, Option, PassOptions


@dataclass(frozen=True, kw_only=True)
class PassSpec(PassOptions):
    """The pass: what, where, since when, and its options (the fields of PassOptions).
    ``started`` is the clock every age filter is measured against, so all workers on all nodes
    agree on what "a day old" means."""

    id: str
    op: str
    src: str
    dst: str
    started: float
    #: the source's mount points as the passes on it saw them (relative; "" is SRC itself):
    #: a directory among them that is no mount point now plans no deletion (ops.mountguard).
    #: Not an option: what the pass found at its start, kept for a resume
    source_mounts: tuple[str, ...] = ()
    #: how many chunks the coordinator runs at once while ``bwlimit`` or ``max_rate`` is set:
    #: each takes that share of the limits (fsclone.ops.pace). A run's, like the limits
    rate_slots: int = 1
    #: what each side's filesystem holds and does, found by the coordinator at the pass's
    #: start (fsclone.fs.profile) and kept for a resume: the workers read it, never probe
    profile: Profiles = UNKNOWN

    @property
    def rehearsal(self) -> bool:
        """A dry run of a pass that would write: it leaves nothing to resume. (A scan is a
        dry run by nature, and resumable.)"""
        return self.dry_run and self.op != "scan"

    def to_wire(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_wire(cls, data: Any) -> PassSpec:
        """The spec in ``data``; keys it does not know (a record of another version) are left
        out, and JSON's lists and objects become the tuples and profiles they were."""
        try:
            given = _with_rules(dict(data))
            values = {f.name: _typed(given[f.name], f.default)
                      for f in dataclasses.fields(cls) if f.name in given}
            return cls(**values)
        except (TypeError, ValueError) as exc:
            raise MessageError(f"malformed pass spec: {exc}") from exc


def _with_rules(given: dict[str, Any]) -> dict[str, Any]:
    """A record from before filter rules kept its globs as two lists, an include overriding
    every exclude: the same as the rules of all includes, then all excludes."""
    if "filter_rules" not in given and ("excludes" in given or "includes" in given):
        given["filter_rules"] = [*(f"+ {p}" for p in given.get("includes") or ()),
                                 *(f"- {p}" for p in given.get("excludes") or ())]
    return given


def _typed(value: Any, default: Any) -> Any:
    if isinstance(default, Profiles):
        return Profiles.from_wire(value)
    return tuple(value) if isinstance(default, tuple) else value


def _request_value(spec: PassSpec, option: Option) -> Any:
    """One option in a form that compares by meaning (``Option.compare``)."""
    return option.compare(getattr(spec, option.name))


def differences(stored: PassSpec, asked: PassSpec) -> list[str]:
    """The options a pass was started with that differ from those asked now, as flags."""
    return [o.flag for o in SHAPING if _request_value(stored, o) != _request_value(asked, o)]


def as_flags(spec: PassSpec) -> list[str]:
    """The options of ``spec`` that are not the defaults, spelled as command-line flags."""
    flags: list[str] = []
    for o in SHAPING:
        value = _request_value(spec, o)
        if value == o.compare(o.default):
            continue
        if value is True:
            flags.append(o.flag)
        elif isinstance(value, tuple):
            flags += [part for item in value for part in (o.flag, o.spell(item))]
        else:
            flags += [o.flag, o.spell(getattr(spec, o.name))]
    return flags
