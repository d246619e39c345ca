"""Applying a directory's own metadata once its contents are in place. Used at the end of a copy
chunk, by the deferred ``dirmeta`` chunk of a split directory, by the mtime pass, and after
deletions (which move the parent's mtime)."""

from __future__ import annotations

import os

from fsclone.chunk import Chunk, Result
from fsclone.fs import meta, remove, steps
from fsclone.ops.context import Context, Outcome, on_both_dirs
from fsclone.stats import counters as C


def apply_dir_meta(ctx: Context, out: Outcome, relpath: str, sfd: int, dfd: int,
                   count: bool | None = None) -> None:
    """Make the target directory's owner, mode, xattrs/ACLs and times those of the source.
    What counts as an update: by default a change of owner, mode or xattrs (a copy pass restores
    times after every write into a directory, which is no news); with ``count`` True any change
    (the mtime pass); with False nothing (a directory this pass created)."""
    try:
        sst, dst = os.fstat(sfd), os.fstat(dfd)
        diff = meta.inode_diff(sst, dst, ctx.times)
        sx = meta.read_xattrs(sfd, side=steps.SOURCE)
        dx = meta.read_xattrs(dfd, side=steps.TARGET)
        diff = meta.with_xattrs(diff, sx, dx)
        if not diff:
            return
        out.act("attrs", relpath or ".", ",".join(diff.names()))
        if ctx.spec.dry_run:
            return
        meta.apply_all(dfd, sst, sx, dx)
        if count or (count is None and (diff.owner or diff.mode or diff.xattrs)):
            out.count(C.UPDATED)
    except OSError as exc:
        out.fail(relpath, exc, "dirmeta")


def created(chunk: Chunk) -> bool | None:
    """False (count nothing) for a directory the pass itself created, else the default."""
    return False if chunk.args.get("new") else None


@on_both_dirs
def run_dirmeta(ctx: Context, out: Outcome, sfd: int, dfd: int) -> None:
    """The deferred metadata of one directory (after its slices and large files are done)."""
    apply_dir_meta(ctx, out, out.chunk.path, sfd, dfd, created(out.chunk))


def run_cleanup(ctx: Context, chunk: Chunk) -> Result:
    """End of a copy or sync pass: remove the hard-link staging directory, then give the target
    root back its times (the staging directory's removal moved them)."""
    out = Outcome(ctx, chunk)
    if ctx.dst_root is None or ctx.spec.dry_run:
        return out.result
    try:
        remove.remove_flat_tree(ctx.dst_root, ctx.staging)
    except FileNotFoundError:
        pass
    except OSError as exc:
        out.fail(ctx.staging, exc, "cleanup")
    try:
        meta.apply_times(ctx.dst_root, os.fstat(ctx.src_root))
    except OSError as exc:
        out.fail("", exc, "cleanup")
    return out.result
