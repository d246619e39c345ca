"""faultfs mounts for tests: one over a backing directory, skipped where FUSE is missing
(failed instead under CI, where it must be there)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from faultfs import FaultFS, FaultFSUnavailable, build, check_available
from tests.services import skip_or_fail


def require_faultfs() -> None:
    """Skip (fail under CI) unless faultfs can be built and mounted here."""
    try:
        check_available()
        build()
    except FaultFSUnavailable as exc:
        skip_or_fail(f"faultfs unavailable: {exc}")


@contextlib.contextmanager
def faulty(root: Path, name: str, *, direct_io: bool = False) -> Iterator[tuple[Path, FaultFS]]:
    """``root/name`` as a faultfs mount over the backing directory ``root/name.backing``;
    yields the mountpoint and the mount's controls."""
    require_faultfs()
    backing, mountpoint = root / f"{name}.backing", root / name
    backing.mkdir(parents=True, exist_ok=True)
    mountpoint.mkdir(parents=True, exist_ok=True)
    with FaultFS(backing, mountpoint, direct_io=direct_io) as fs:
        yield mountpoint, fs
