"""A target file given the name its source file was renamed to (fsclone.ops.moves): the check
that it holds the source's bytes, and the move itself. Every OSError that leaves here is
marked with its step and side (fs/steps.py)."""

from __future__ import annotations

import os

from fsclone.fs import data, dirs
from fsclone.fs.source import SourceDir
from fsclone.fs.steps import COMPARE, OPEN, PUBLISH, TARGET, mark
from fsclone.fs.target import TargetDir


def same_bytes(src: SourceDir, name: str, tgt: TargetDir, old: str, dst: os.stat_result,
               ) -> bool:
    """Whether the source's ``name`` and the target's ``old`` (still the inode ``dst``) hold
    the same ``dst.st_size`` bytes (xxh3-128 of each)."""
    size = dst.st_size
    src_fd = src.open_file(name)
    try:
        try:
            dst_fd = dirs.open_file(old, tgt.fd)
        except OSError as exc:
            raise mark(exc, OPEN, TARGET) from None
        try:
            if os.fstat(dst_fd).st_ino != dst.st_ino:
                return False
            try:
                theirs = data.hash_range(dst_fd, 0, size)[0]
            except OSError as exc:
                raise mark(exc, COMPARE, TARGET) from None
            return data.hash_range(src_fd, 0, size)[0] == theirs
        finally:
            os.close(dst_fd)
    finally:
        os.close(src_fd)


def move(tgt: TargetDir, old: str, name: str) -> bool:
    """Link the target's file ``old`` at ``name`` (never over an entry that appeared there),
    then drop ``old``; returns whether ``old`` went (if not, it is left for its planned
    deletion, which lists its error)."""
    try:
        os.link(old, name, src_dir_fd=tgt.fd, dst_dir_fd=tgt.fd, follow_symlinks=False)
    except OSError as exc:
        raise mark(exc, PUBLISH, TARGET) from None
    try:
        os.unlink(old, dir_fd=tgt.fd)
    except OSError:
        return False
    return True
