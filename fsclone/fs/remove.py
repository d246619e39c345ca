"""Removing target entries, by name below a directory fd: the only place fsclone unlinks or
removes a directory. Neither call follows a symlink (unlink removes the link itself, rmdir of
one fails with ENOTDIR), so a link a user swapped in never leads outside the target. What to
remove, and what an error means, ops/ decides; an error leaves here marked as a REMOVE step on
the target (fsclone.fs.steps).

An immutable or append-only entry, or one in such a directory, refuses to go (EPERM, root
included): with the target's ``flags`` (fs.inodeflags.Side), both are unlocked for the removal
and the directory (and the inode, which other names may hold) locked again."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable

from fsclone.fs import dirs, steps
from fsclone.fs.inodeflags import Side


def unlink(name: str, dir_fd: int, flags: Side | None = None) -> None:
    """Remove the non-directory ``name`` below ``dir_fd``."""
    _remove(os.unlink, name, dir_fd, flags)


def rmdir(name: str, dir_fd: int, flags: Side | None = None) -> None:
    """Remove the empty directory ``name`` below ``dir_fd``."""
    _remove(os.rmdir, name, dir_fd, flags)


def _remove(call: Callable[..., None], name: str, dir_fd: int, flags: Side | None) -> None:
    try:
        try:
            call(name, dir_fd=dir_fd)
        except PermissionError as exc:
            if flags is None or exc.errno != errno.EPERM:
                raise
            with flags.unlocked(dir_fd), flags.unlocked_at(name, dir_fd):
                call(name, dir_fd=dir_fd)
    except OSError as exc:
        steps.mark(exc, steps.REMOVE, steps.TARGET)
        raise


def remove_flat_tree(dir_fd: int, name: str, flags: Side | None = None) -> int:
    """Remove the flat directory ``name`` below ``dir_fd``: the non-directories in it, then
    itself. Only for directories of fsclone's own making (the hard-link staging directory), so
    one with a subdirectory is refused (IsADirectoryError) before anything in it goes; a
    user's subtree is removed by ``prune`` chunks, spread over the workers
    (fsclone.ops.subtree). Returns the number of entries removed. ``flags``: see the module
    docstring (the staging directory holds names of immutable inodes)."""
    sub = dirs.open_dir(name, dir_fd)
    try:
        kinds = dirs.list_kinds(sub)
        if any(kinds.values()):
            raise steps.mark(IsADirectoryError(errno.EISDIR, "not flat, so not of fsclone's "
                                               "making", name), steps.REMOVE, steps.TARGET)
        for child in kinds:
            unlink(child, sub, flags)
    finally:
        os.close(sub)
    rmdir(name, dir_fd)
    return len(kinds) + 1
