"""Which step of an item's work failed, and on which side.

An OSError raised by ``fs/`` is marked with the step it came from (open the source, create the
target, copy data, set an xattr, ...) and the side (source or target) before it leaves, so an
item error can say more than the chunk's op: ``fsclone errors`` and ``--json`` show both. The
mark rides on the exception itself, so callers keep catching ``FileExistsError`` and friends,
and marking costs nothing on the path that succeeds.
"""

from __future__ import annotations

from typing import Final

SOURCE: Final = "source"
TARGET: Final = "target"

#: the steps an item's work is made of, in the words ``fsclone errors`` shows
OPEN: Final = "open"            # open a file or directory
LIST: Final = "list"            # list a directory
STAT: Final = "stat"            # look an entry up
READ: Final = "read"            # read data (or a link's target)
CREATE: Final = "create"        # make a new entry: file, temp, directory, link, node
DATA: Final = "data"            # copy bytes into the target
OWNER: Final = "owner"          # chown
MODE: Final = "mode"            # chmod
XATTR: Final = "xattr"          # read or write extended attributes and ACLs
TIMES: Final = "times"          # set times
FLAGS: Final = "flags"          # read or set a project ID or inode flags
PUBLISH: Final = "publish"      # give a finished entry its name (rename, link in)
REMOVE: Final = "remove"        # unlink or rmdir
COMPARE: Final = "compare"      # content checks (verify, --checksum)

_STEP: Final = "fsclone_step"
_SIDE: Final = "fsclone_side"


def mark(exc: OSError, step: str, side: str) -> OSError:
    """Mark ``exc`` with the step and side it failed at, unless an inner call did already
    (the innermost mark is the most precise). Returns ``exc`` for ``raise mark(...)``."""
    if not hasattr(exc, _STEP):
        setattr(exc, _STEP, step)
        setattr(exc, _SIDE, side)
    return exc


def step_of(exc: BaseException) -> tuple[str, str]:
    """The (step, side) ``exc`` was marked with; ("", "") when it was not."""
    return getattr(exc, _STEP, ""), getattr(exc, _SIDE, "")
