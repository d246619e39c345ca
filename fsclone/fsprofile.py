"""What one side of a pass holds and does (:class:`FsProfile`), and the site's overrides of it.

Found once, at the start of a pass, by its coordinator (``fsclone.fs.profile`` probes it),
kept in the pass record and handed to every worker with the spec: no worker probes. The
site's ``PROFILE`` setting overrides what the probes found, side by side and key by key
(:func:`parse_overrides`), for what probes cannot see (an NFS server that keeps whole seconds
on some exports, a ``copy_file_range`` a site does not trust).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

#: a pass's two sides, as the profiles, the overrides and the record name them
SIDES = ("src", "dst")
_LABELS = {"src": "source", "dst": "target"}
#: the kind of a target a dry run has not made
ABSENT = "absent"


@dataclass(frozen=True)
class FsProfile:
    """One side's filesystem. ``None``: not probed (the source, which is never written to; a
    target in a dry run, in a delete pass, or one that refused the probe), so workers keep
    to what works everywhere and learn from refusals."""

    #: from statfs (fs.fstype): lustre, gpfs, nfs, xfs, ext4, btrfs, tmpfs, fuse, other;
    #: "absent" for a target a dry run has not made
    kind: str = "other"
    #: the median of a few stats of the root, in µs: how far the metadata server is
    latency_us: int = 0
    #: the step and range of the times it keeps (range: None for no limit seen)
    time_step_ns: int | None = None
    time_low_ns: int | None = None
    time_high_ns: int | None = None
    #: whether it makes unnamed files (O_TMPFILE) and copies within itself in the kernel
    tmpfile: bool | None = None
    copy_file_range: bool | None = None
    #: whether it holds project IDs and inode flags (fs.inodeflags)
    project_ids: bool = False
    flags: bool = False
    #: whether a new file's data is flushed before its times are set (Lustre)
    flush_before_times: bool = False
    #: the xattr names never read or copied (fs.xattrnames; a trailing * is a prefix)
    skipped_xattrs: tuple[str, ...] = ()
    #: the keys the site's PROFILE set rather than a probe
    overridden: tuple[str, ...] = ()

    def line(self, side: str) -> str:
        """One short line for the summary and ``status``: "target: xfs, times 1ns, ..."."""
        if self.kind == ABSENT:
            return f"{_LABELS[side]}: not there yet"
        parts = [self.kind]
        if self.time_step_ns is not None:
            parts.append(f"times {step_text(self.time_step_ns)}{self._range}")
        for known, name in ((self.tmpfile, "O_TMPFILE"),
                            (self.copy_file_range, "copy_file_range"),
                            (self.project_ids, "project IDs"), (self.flags, "flags")):
            if known is not None:
                parts.append(name if known else f"no {name}")
        if self.flush_before_times:
            parts.append("data flushed before times")
        parts.append(f"stat {self.latency_us:,}µs")
        if self.overridden:
            parts.append(f"PROFILE set {', '.join(self.overridden)}")
        return f"{_LABELS[side]}: {', '.join(parts)}"

    @property
    def _range(self) -> str:
        """The years the times it keeps span, where it showed a limit: " 1901-2038"."""
        low, high = self.time_low_ns, self.time_high_ns
        if low is None and high is None:
            return ""
        return f" {'' if low is None else _year(low)}-{'' if high is None else _year(high)}"


@dataclass(frozen=True)
class Profiles:
    """Both sides of a pass: what its spec carries."""

    src: FsProfile = FsProfile()
    dst: FsProfile = FsProfile()

    def lines(self) -> list[str]:
        return [self.src.line("src"), self.dst.line("dst")]

    def to_wire(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_wire(cls, data: Any) -> Profiles:
        """The profiles in ``data`` (a record's or a message's); keys of another version are
        left out. TypeError or ValueError when malformed."""
        known = {f.name for f in fields(FsProfile)}

        def side(given: Any) -> FsProfile:
            values = {k: v for k, v in dict(given).items() if k in known}
            for key in ("skipped_xattrs", "overridden"):
                if key in values:
                    values[key] = tuple(values[key])
            return FsProfile(**values)

        return cls(**{name: side(data[name]) for name in SIDES if name in data})

    def overridden(self, overrides: Mapping[str, Mapping[str, Any]] | None) -> Profiles:
        """These profiles with the site's overrides (see :func:`parse_overrides`) applied."""
        if not overrides:
            return self
        changed = {}
        for name, given in overrides.items():
            found: FsProfile = getattr(self, name)
            keys = tuple(dict.fromkeys((*found.overridden, *given)))
            changed[name] = replace(found, **given, overridden=keys)
        return replace(self, **changed)


#: the profile of a side nothing was found of (a spec made without a pass: tests, a scan)
UNPROBED = FsProfile()
#: both sides of such a spec
UNKNOWN = Profiles()


def _year(ns: int) -> int:
    """The year (of the Gregorian calendar's mean length) a time since 1970 falls in."""
    return 1970 + ns // 31_556_952_000_000_000


def step_text(ns: int) -> str:
    """A time step as people say it: 1ns, 100ns, 1µs, 10ms, 1s, 2s."""
    for unit, size in (("s", 10**9), ("ms", 10**6), ("µs", 10**3)):
        if ns >= size and ns % size == 0:
            return f"{ns // size}{unit}"
    return f"{ns}ns"


def _flag(v: Any) -> bool:
    return isinstance(v, bool)


def _whole(least: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= least


def _time_or_none(v: Any) -> bool:
    return v is None or _whole(-(2**63))(v)


#: what the site may set, side by side, and the check of each value: the source is never
#: written to, so only what is read there (and its time step, for the comparison at the
#: coarser of the two sides) can be said of it
_CHECKS: dict[str, Callable[[Any], bool]] = {
    "time_step_ns": _whole(1), "time_low_ns": _time_or_none, "time_high_ns": _time_or_none,
    "tmpfile": _flag, "copy_file_range": _flag, "project_ids": _flag, "flags": _flag,
    "flush_before_times": _flag, "latency_us": _whole(0),
}
_WANTS = {"time_step_ns": "a whole number of ns, at least 1",
          "latency_us": "a whole number, 0 or more",
          "time_low_ns": "a whole number of ns, or None",
          "time_high_ns": "a whole number of ns, or None"}
OVERRIDABLE: dict[str, tuple[str, ...]] = {
    "src": ("time_step_ns", "project_ids", "flags", "latency_us"),
    "dst": tuple(_CHECKS),
}


def parse_overrides(value: Any) -> dict[str, dict[str, Any]]:
    """The site's PROFILE: ``{"dst": {"time_step_ns": 10**9, "tmpfile": False}, "src": {...}}``
    (a dict in config.py; JSON in ``FSCLONE_PROFILE``). ValueError naming the first bad side,
    key or value."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(value, Mapping):
        raise ValueError('not a dict of "src" and "dst"')
    out: dict[str, dict[str, Any]] = {}
    for name, given in value.items():
        if name not in OVERRIDABLE:
            raise ValueError(f'no side {name!r} (the sides: "src", "dst")')
        if not isinstance(given, Mapping):
            raise ValueError(f"PROFILE[{name!r}] is not a dict")
        for key, v in given.items():
            if key not in OVERRIDABLE[name]:
                raise ValueError(f"PROFILE[{name!r}] has no key {key!r} (it takes: "
                                 f"{', '.join(OVERRIDABLE[name])})")
            if not _CHECKS[key](v):
                raise ValueError(f"PROFILE[{name!r}][{key!r}] must be "
                                 f"{_WANTS.get(key, 'True or False')}, not {v!r}")
        out[name] = dict(given)
    return out
