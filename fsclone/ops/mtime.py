"""The mtime pass: every target directory gets its source directory's times (and owner, mode,
ACLs), after users' writes during earlier passes moved them."""

from __future__ import annotations

import stat

from fsclone.fs import dirs
from fsclone.ops.context import Context, Outcome, on_both_dirs
from fsclone.ops.dirmeta import apply_dir_meta
from fsclone.ops.mountguard import skipped
from fsclone.stats import counters as C


@on_both_dirs
def run_mtime(ctx: Context, out: Outcome, sfd: int, dfd: int) -> None:
    """One directory's metadata, and its subdirectories that exist on both sides."""
    out.count(C.SCANNED)
    for name, is_dir in dirs.list_kinds(sfd).items():
        rel = out.path(name)
        if not is_dir or ctx.filters.excluded(rel, True) or skipped(ctx, out, name, sfd):
            continue
        target = dirs.lstat_at(name, dfd)
        if target is not None and stat.S_ISDIR(target.st_mode):
            out.child("mtime", rel)
    apply_dir_meta(ctx, out, out.chunk.path, sfd, dfd, count=True)
