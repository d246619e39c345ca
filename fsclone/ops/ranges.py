"""Large files in byte ranges, and the barrier a directory's metadata waits behind.

A file of ``large_file_size`` or more is given a temp file of its size in its directory and
split into ``range`` chunks, copied by several workers into that one temp; a ``finalize`` chunk
(fsclone.ops.finalize) publishes it when every range is done. A huge directory's slices and its
large files all count toward the directory's barrier, whose ``then`` applies its metadata.
"""

from __future__ import annotations

import itertools
import os

from fsclone.chunk import Chunk, Group, new_id
from fsclone.fs import data, largefile
from fsclone.fs.target import TargetDir
from fsclone.ops.context import Context, Outcome, file_of, file_path, on_both_dirs
from fsclone.stats import counters as C


class DirBarrier:
    """What one chunk leaves running that its directory's metadata must wait for: slices of
    the directory and large files (``members``), and each large file's range chunks."""

    __slots__ = ("_id", "members", "ranges")

    def __init__(self) -> None:
        self.members = 0
        #: each large file's range chunks, handed out interleaved by :meth:`hand_out`
        self.ranges: list[list[Chunk]] = []
        self._id: str | None = None

    @property
    def id(self) -> str:
        """The barrier's group id; made on first use, since most chunks have no members."""
        if self._id is None:
            self._id = new_id()
        return self._id

    def hand_out(self, out: Outcome) -> None:
        """The range chunks, one of each large file in turn: on most filesystems two writers
        of one file queue on its inode lock, so workers busy with different files go faster."""
        for turn in itertools.zip_longest(*self.ranges):
            out.result.children.extend(c for c in turn if c is not None)

    def close(self, out: Outcome, then: Chunk) -> None:
        """Issue ``then`` once every member is done."""
        out.result.groups.append(Group(self.id, self.members, then))


def split(ctx: Context, out: Outcome, tgt: TargetDir, name: str, st: os.stat_result,
          barrier: DirBarrier, layout: bytes | None = None) -> None:
    """Make the temp file of a large file (with the source's Lustre ``layout``) and its range
    chunks; a barrier of their own finalizes it, and that finalize is a member of the
    directory's ``barrier``."""
    group = new_id()
    tmp = largefile.sized_temp(tgt, name, st.st_size, group[:12], layout)
    args = {"tmp": tmp, "ino": st.st_ino, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "ctime_ns": st.st_ctime_ns, "sparse": data.is_sparse(st)}
    step = ctx.spec.range_size
    path = out.chunk.path
    barrier.ranges.append([
        Chunk(op="range", path=path, names=(name,), group=group,
              args={**args, "start": start, "end": min(start + step, st.st_size)})
        for start in range(0, st.st_size, step)])
    then = Chunk(op="finalize", path=path, names=(name,), args=args, group=barrier.id)
    out.result.groups.append(Group(group, -(-st.st_size // step), then))
    barrier.members += 1


def _copy_range(ctx: Context, out: Outcome, sfd: int, dfd: int) -> None:
    """Copy one byte range of a large file into its shared temp file. A source that changed is
    left to ``finalize``, which checks the identity once all ranges are done."""
    a = out.chunk.args
    written = largefile.copy_range(ctx.target_dir(dfd), ctx.source_dir(sfd), file_of(out.chunk),
                                   a["tmp"], a["start"], a["end"], a["sparse"])
    out.count(C.BYTES, written)


# an error is the file's, not its directory's
run_range = on_both_dirs(_copy_range, where=file_path)
