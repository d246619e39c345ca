"""The scan op (``fsclone scan SRC``): count a source tree in parallel, like mpiFileUtils' dwalk.

One directory (or one slice of a huge one) per chunk: each entry is counted by type, regular
files by size into a power-of-2 histogram; subdirectories become child chunks. Nothing is
opened but directories, and the target is never touched.
"""

from __future__ import annotations

import os
import stat

from fsclone.chunk import Chunk, Result
from fsclone.fs import dirs
from fsclone.ops.context import Context, Outcome
from fsclone.stats import counters as C


def run_scan(ctx: Context, chunk: Chunk) -> Result:
    out = Outcome(ctx, chunk)
    try:
        with dirs.opened(dirs.open_path(ctx.src_root, chunk.path)) as sfd:
            names = chunk.names if chunk.names is not None else _split(out, dirs.list_names(sfd))
            for name in names:
                try:
                    st = dirs.lstat_at(name, sfd)
                except OSError as exc:
                    out.fail(out.path(name), exc)
                    continue
                if st is not None:
                    _count(ctx, out, name, st)
    except OSError as exc:
        out.fail(chunk.path or ".", exc)
    return out.result


def _split(out: Outcome, names: list[str]) -> list[str]:
    """Keep the first slice of a huge directory; the rest go out as slice chunks."""
    size = out.ctx.spec.dir_slice
    for start in range(size, len(names), size):
        out.child("scan", out.chunk.path, names=tuple(names[start:start + size]))
    return names[:size]


def _count(ctx: Context, out: Outcome, name: str, st: os.stat_result) -> None:
    rel = out.path(name)
    out.count(C.SCANNED)
    if ctx.filters.excluded(rel, stat.S_ISDIR(st.st_mode)):
        out.count(C.SKIP_EXCLUDED)
        return
    if stat.S_ISDIR(st.st_mode):
        out.count(C.DIRS)
        out.child("scan", rel)
    elif stat.S_ISREG(st.st_mode):
        out.count(C.FILES)
        out.count(C.SIZE, st.st_size)
        out.count(C.size_bucket(st.st_size))
        if st.st_nlink > 1:
            out.count(C.HARDLINKS)
    elif stat.S_ISLNK(st.st_mode):
        out.count(C.SYMLINKS)
    else:
        out.count(C.OTHERS)
