"""A pass's filesystem profiles (fsclone.fsprofile): found by its coordinator at the start,
the site's PROFILE applied, and kept by a resume unless a side is on another kind of
filesystem now."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from fsclone.fs import profile
from fsclone.fsprofile import Profiles
from fsclone.spec import PassSpec

#: the passes whose target is probed by writing: those that compare its times with the
#: source's (a dry run never writes)
PROBED = ("copy", "sync", "mtime", "verify")
Overrides = Mapping[str, Mapping[str, Any]] | None


def found(spec: PassSpec, overrides: Overrides) -> Profiles:
    """Both sides of pass ``spec`` as probed now, with the site's ``overrides``."""
    writes = spec.op in PROBED and not spec.dry_run
    return Profiles(src=profile.probe(spec.src, spec.id, writes=False),
                    dst=profile.probe(spec.dst, spec.id, writes=writes)).overridden(overrides)


def for_pass(spec: PassSpec, resume: bool, overrides: Overrides,
             note: Callable[[str], None]) -> Profiles:
    """The profiles pass ``spec`` runs with: found now for a new pass; for a resume, those
    its record kept (what its first run compared by must not change under it), unless a
    side's filesystem kind is not the recorded one (remounted, or a record from before
    profiles), which finds both again."""
    if not resume:
        return found(spec, overrides)
    kept = spec.profile
    now = (profile.kind_at(spec.src), profile.kind_at(spec.dst))
    if now != (kept.src.kind, kept.dst.kind):
        note(f"pass {spec.id}: the filesystems are {' and '.join(now)} now, not "
             f"{kept.src.kind} and {kept.dst.kind}: their profile is found again")
        return found(spec, overrides)
    if kept.overridden(overrides) != kept:
        note(f"pass {spec.id} keeps the filesystem profile it started with: the PROFILE "
             "setting changed since (--restart to start anew with it)")
    return kept
