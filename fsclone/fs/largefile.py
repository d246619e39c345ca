"""A large file's shared temp file in its target directory: made at its full size (all hole)
by the directory's chunk, then written in byte ranges by several workers at once
(fsclone.ops.ranges); ``TargetDir.publish_stamped`` publishes it once every range is done."""

from __future__ import annotations

import os

from fsclone.fs import data
from fsclone.fs.source import SourceDir
from fsclone.fs.steps import DATA, TARGET, mark
from fsclone.fs.target import TargetDir
from fsclone.schema import temp_name


def sized_temp(tgt: TargetDir, name: str, size: int, tag: str,
               layout: bytes | None = None) -> str:
    """A new temp file of ``size`` bytes (all hole) for the byte ranges of a large file,
    to be written by several workers (:func:`copy_range`), with the source's Lustre
    ``layout`` (see TargetDir.create_temp); returns its name."""
    tmp = temp_name(tgt.pass_id, name, tag)
    fd = tgt.create_temp(tmp, layout=layout)
    try:
        os.ftruncate(fd, size)
    except OSError as exc:
        tgt.discard(tmp)
        mark(exc, DATA, TARGET)
        raise
    finally:
        os.close(fd)
    return tmp


def copy_range(tgt: TargetDir, src: SourceDir, name: str, tmp: str, start: int, end: int,
               sparse: bool) -> int:
    """Copy bytes [start, end) of the source file ``name`` into the same bytes of the
    temp file ``tmp`` (:func:`sized_temp`); returns the bytes written."""
    sfd = src.open_file(name)
    try:
        fd = tgt.open_temp(tmp)
        try:
            return data.copy_range(sfd, fd, start, end, sparse, kernel=tgt.kernel)
        finally:
            os.close(fd)
    finally:
        os.close(sfd)
