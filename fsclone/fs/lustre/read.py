"""Reading Lustre layouts (the ``lustre.lov`` xattr) of either side: a file's by its name, never
opening it (an open of an HSM-released file may recall it from tape), and a directory's default
by its fd. Every read goes through :func:`getxattr`, the one seam tests replace with a table of
layouts, as tmpfs has no ``lustre.`` namespace."""

from __future__ import annotations

import errno
import os

from fsclone.fs.lustre.layout import LAYOUT_XATTR
from fsclone.fs.steps import XATTR, mark

#: getxattr errors meaning "no layout here": none set, or not Lustre
_NONE = {errno.ENODATA, errno.EOPNOTSUPP}


def getxattr(target: int | str) -> bytes:
    """The raw ``lustre.lov`` of an fd, or of a path (its last component not followed)."""
    if isinstance(target, int):
        return os.getxattr(target, LAYOUT_XATTR)
    return os.getxattr(target, LAYOUT_XATTR, follow_symlinks=False)


def _layout(target: int | str, side: str) -> bytes | None:
    try:
        return getxattr(target)
    except OSError as exc:
        if exc.errno in _NONE:
            return None
        mark(exc, XATTR, side)
        raise


def file_layout(dir_fd: int, name: str, side: str) -> bytes | None:
    """The layout of the file ``name`` in the directory ``dir_fd``; None: it has none."""
    return _layout(f"/proc/self/fd/{dir_fd}/{name}", side)


def dir_default(fd: int, side: str) -> bytes | None:
    """The default layout the directory ``fd`` shows (its own, or its filesystem root's)."""
    return _layout(fd, side)


def parent_default(fd: int, side: str) -> bytes | None:
    """The default layout the parent of the directory ``fd`` shows (read only, even above a
    pass root)."""
    return _layout(f"/proc/self/fd/{fd}/..", side)
