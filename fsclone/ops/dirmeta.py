"""Applying a directory's own metadata once its contents are in place. Used at the end of a copy
chunk, by the deferred ``dirmeta`` chunk of a split directory, by the mtime pass, and after
deletions (which move the parent's mtime)."""

from __future__ import annotations

import os

from fsclone.chunk import Chunk, Result
from fsclone.fs import inodeflags, meta, remove, steps
from fsclone.ops.context import Context, Outcome, on_both_dirs
from fsclone.stats import counters as C


def apply_dir_meta(ctx: Context, out: Outcome, relpath: str, sfd: int, dfd: int,
                   count: bool | None = None) -> None:
    """Make the target directory's owner, mode, xattrs/ACLs, times, project ID and flags those
    of the source. What counts as an update: by default a change of owner, mode, xattrs,
    project ID or flags (a copy pass restores times after every write into a directory, which
    is no news); with ``count`` True any change (the mtime pass); with False nothing (a
    directory this pass created). A directory's project ID and flags are always compared (its
    fds are open: an ioctl or two a side), which also locks again one a copy had to unlock."""
    try:
        sst, dst = os.fstat(sfd), os.fstat(dfd)
        diff = meta.inode_diff(sst, dst, ctx.times)
        sx = meta.read_xattrs(sfd, side=steps.SOURCE)
        dx = meta.read_xattrs(dfd, side=steps.TARGET)
        diff = meta.with_xattrs(diff, sx, dx)
        side = ctx.dst_flags
        want = have = inodeflags.NONE
        if ctx.src_flags.any:
            want, have = ctx.src_flags.read(sfd), side.read(dfd)
        flagged = bool(want.differences(have))
        if not diff and not flagged:
            return
        out.act("attrs", relpath or ".", ",".join(diff.names() + (["flags"] if flagged else [])))
        if ctx.spec.dry_run:
            return
        with side.changing(dfd, want, have) as then:
            meta.apply_all(dfd, sst, sx, dx, then=then)
        if count or (count is None and (diff.owner or diff.mode or diff.xattrs or flagged)):
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
        remove.remove_flat_tree(ctx.dst_root, ctx.staging, ctx.dst_flags)
    except FileNotFoundError:
        pass
    except OSError as exc:
        out.fail(ctx.staging, exc, "cleanup")
    try:
        meta.apply_times(ctx.dst_root, os.fstat(ctx.src_root))
    except OSError as exc:
        out.fail("", exc, "cleanup")
    return out.result
