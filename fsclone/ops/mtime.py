"""The mtime pass: every target directory gets its source directory's times (and owner, mode,
ACLs), after users' writes during earlier passes moved them."""

from __future__ import annotations

import stat

from fsclone.chunk import Chunk, Result
from fsclone.fs import dirs
from fsclone.ops.context import Context, Outcome
from fsclone.ops.dirmeta import apply_dir_meta
from fsclone.stats import counters as C


def run_mtime(ctx: Context, chunk: Chunk) -> Result:
    out = Outcome(ctx, chunk)
    try:
        with ctx.open_dirs(chunk.path) as (sfd, dfd):
            if dfd is None:
                return out.result
            out.count(C.SCANNED)
            for name, is_dir in dirs.list_kinds(sfd).items():
                rel = out.path(name)
                if not is_dir or ctx.filters.excluded(rel, name):
                    continue
                target = dirs.lstat_at(name, dfd)
                if target is not None and stat.S_ISDIR(target.st_mode):
                    out.child("mtime", rel)
            apply_dir_meta(ctx, out, chunk.path, sfd, dfd, count=True)
    except OSError as exc:
        out.fail(chunk.path or ".", exc)
    return out.result
