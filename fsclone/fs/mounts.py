"""Where filesystems begin: mount points as the kernel tells them, never guessed from names.

An unmounted filesystem leaves an ordinary directory behind (empty, or holding what was
written there while nothing was mounted), and a directory that was a mount point at one pass
and is one no more is the sign the deletion guards look for (fsclone.ops.mountguard).
"""

from __future__ import annotations

import os
import re

MOUNTINFO = "/proc/self/mountinfo"
_ESCAPE = re.compile(rb"\\([0-7]{3})")
#: an fd only to stat: opening it reads nothing and moves no atime
_PATH_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC


def _mount_points() -> list[str]:
    """Every mount point of this process, from the kernel's list."""
    points = []
    with open(MOUNTINFO, "rb") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 5:
                points.append(
                    os.fsdecode(_ESCAPE.sub(lambda m: bytes([int(m.group(1), 8)]), fields[4])))
    return points


def mount_point_of(path: str) -> str:
    """The mount point of the filesystem holding the absolute, resolved ``path``: the longest
    mount point it is at or below."""
    return max((p for p in _mount_points()
                if p == "/" or path == p or path.startswith(p.rstrip("/") + "/")), key=len)


def mount_points_below(root: str) -> set[str]:
    """The mount points at or below the absolute, resolved directory ``root``, as paths
    relative to it ("" is ``root`` itself), from the kernel's list of this process's mounts."""
    top = root.rstrip("/") + "/"
    found: set[str] = set()
    for point in _mount_points():
        if point == root:
            found.add("")
        elif point.startswith(top):
            found.add(point[len(top):])
    return found


def is_mount_root(fd: int) -> bool:
    """Whether the directory open at ``fd`` is the root of a mount: its device, or its mount
    id (which tells a bind mount of the same filesystem), differs from its parent's. ``..``
    of a mount's root is the parent of the mount point: the kernel resolves it across."""
    parent = os.open("..", _PATH_FLAGS, dir_fd=fd)
    try:
        if os.fstat(fd).st_dev != os.fstat(parent).st_dev:
            return True
        mine, theirs = mount_id(fd), mount_id(parent)
        return mine is not None and mine != theirs
    finally:
        os.close(parent)


def mount_id(fd: int) -> int | None:
    """The id of the mount ``fd`` is on (``mnt_id`` in /proc/self/fdinfo, Linux 3.15 and
    later), None where the kernel does not say."""
    try:
        with open(f"/proc/self/fdinfo/{fd}", "rb") as f:
            for line in f:
                if line.startswith(b"mnt_id:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None
