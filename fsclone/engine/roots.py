"""Checks on the pass roots, made before anything is written: bad input means nothing changes.
"""

from __future__ import annotations

import os

from fsclone.engine.layout import root_unmounted
from fsclone.errors import GuardError, UsageError
from fsclone.fs import dirs


def check_roots(src: str, dst: str, needs_dst: bool) -> tuple[str, str]:
    """Absolute, resolved roots; refuses a missing source, SRC == DST, and one inside the other.
    ``needs_dst``: the pass cannot run without an existing target (delete, mtime, verify)."""
    if not os.path.isdir(src):
        raise UsageError(f"source {src} is missing or not a directory")
    rsrc = os.path.realpath(src)
    rdst = os.path.realpath(dst)
    if os.path.lexists(dst) and not os.path.isdir(dst):
        raise UsageError(f"target {dst} exists and is not a directory")
    if needs_dst and not os.path.isdir(dst):
        raise UsageError(f"target {dst} is missing")
    if not os.path.isdir(os.path.dirname(rdst)):
        raise UsageError(f"the parent of target {dst} does not exist")
    if rsrc == rdst:
        raise UsageError("source and target are the same directory")
    if rdst.startswith(rsrc.rstrip("/") + "/"):
        raise UsageError(f"target {dst} is inside source {src}")
    if rsrc.startswith(rdst.rstrip("/") + "/"):
        raise UsageError(f"source {src} is inside target {dst}")
    _check_identities(src, dst, rsrc, rdst)
    return rsrc, rdst


def _check_identities(src: str, dst: str, rsrc: str, rdst: str) -> None:
    """The same checks by (st_dev, st_ino), which a bind mount cannot hide as it hides paths:
    SRC's root against every directory on DST's path up to /, and DST's root (when it
    exists) against every directory on SRC's."""
    src_id = _identity(rsrc)
    for where in _up(rdst):
        if _identity(where) == src_id:
            if where == rdst:
                raise UsageError(f"source {src} and target {dst} are the same directory "
                                 "(through a bind mount)")
            raise UsageError(f"target {dst} is inside source {src} (through a bind mount at "
                             f"{where})")
    if os.path.isdir(rdst):
        dst_id = _identity(rdst)
        for where in _up(rsrc):
            if _identity(where) == dst_id:
                raise UsageError(f"source {src} is inside target {dst} (through a bind mount "
                                 f"at {where})")


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _up(path: str) -> list[str]:
    """``path`` and every directory above it, up to /."""
    out = [path]
    while out[-1] != "/":
        out.append(os.path.dirname(out[-1]))
    return out


def check_delete_guards(src: str, dst: str, sentinel: str | None,
                        layout: tuple[str, ...] = ()) -> None:
    """Refuse to delete anything when the source root looks wrong: unreadable, empty while the
    target is not (an unmounted filesystem looks like that), missing the site's sentinel, or
    no mount point now while it was one at an earlier pass (``layout``, see engine.layout):
    unmounted, with stray files on the filesystem below."""
    try:
        names = _names(src)
    except OSError as exc:
        raise GuardError(f"source {src} cannot be listed ({exc.strerror}): nothing deleted") \
            from None
    if sentinel and sentinel not in names:
        raise GuardError(f"sentinel {sentinel!r} is missing from source {src}: is it mounted? "
                         "Nothing deleted")
    if not names and os.path.isdir(dst) and _names(dst):
        raise GuardError(f"source {src} is empty but target {dst} is not: is it mounted? "
                         "Nothing deleted")
    if root_unmounted(src, layout):
        raise GuardError(f"source {src} was a mount point at earlier passes and is none now: "
                         "is it mounted? Nothing deleted")


def _names(path: str) -> list[str]:
    """A root's entry names, read without touching its atime."""
    fd = dirs.open_root(path)
    try:
        return dirs.list_names(fd)
    finally:
        os.close(fd)
