"""The source's mount layout as the passes on it saw it: what tells an unmounted part of the
source from a directory its users emptied.

Every pass, at its start, reads the mount points at and below SRC (fsclone.fs.mounts) and
adds them to ``<state dir>/mounts/<hash of the source path>.json``; the pass carries the whole
layout in its spec (``source_mounts``), and its workers refuse deletion below a recorded mount
point that is no mount point now (fsclone.ops.mountguard). A mount point never drops out of the
layout by itself: one missing is the very case to guard against. One retired for good is
removed from the file by hand (docs/migration.md).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from fsclone.fs import dirs, mounts
from fsclone.pathkey import path_key
from fsclone.state.directory import write_private_json


def layout_file(state_dir: Path, src: str) -> Path:
    return state_dir / "mounts" / f"{path_key(src)}.json"


def recorded_mounts(state_dir: Path, src: str) -> set[str]:
    """The mount points earlier passes saw below ``src`` (relative; "" is ``src`` itself)."""
    try:
        data = json.loads(layout_file(state_dir, src).read_text())
        return {str(p) for p in data["mounts"]}
    except (OSError, ValueError, KeyError, TypeError):
        return set()


def source_layout(state_dir: Path, src: str) -> tuple[str, ...]:
    """The source's mount points as recorded, plus those mounted now (recorded in turn)."""
    recorded = recorded_mounts(state_dir, src)
    layout = recorded | mounts.mount_points_below(src)
    if layout != recorded:
        write_private_json(layout_file(state_dir, src), {"src": src, "mounts": sorted(layout)})
    return tuple(sorted(layout))


def root_unmounted(src: str, layout: tuple[str, ...]) -> bool:
    """Whether the source root was a mount point at an earlier pass and is none now."""
    if "" not in layout:
        return False
    fd = dirs.open_root(src)
    try:
        return not mounts.is_mount_root(fd)
    finally:
        os.close(fd)
