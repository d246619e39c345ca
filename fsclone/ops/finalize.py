"""The ``finalize`` op: a large file's byte ranges are all done (fsclone.ops.ranges), so its temp
file is stamped and published, unless a range failed or the source changed meanwhile. Either
way, the temp is never left behind: the target never holds a file under its final name with the
source's size and mtime and other bytes."""

from __future__ import annotations

from fsclone.ops.context import Context, Outcome, file_of, file_path, on_both_dirs
from fsclone.stats import counters as C


def _finalize(ctx: Context, out: Outcome, sfd: int, dfd: int) -> None:
    """Stamp metadata and rename, unless a range failed (its error is listed already) or the
    source changed. The temp is discarded on every way out but its publishing."""
    a = out.chunk.args
    name = file_of(out.chunk)
    src, tgt = ctx.source_dir(sfd), ctx.target_dir(dfd)
    published = False
    try:
        if a.get("members_failed"):
            out.act("not published", out.path(name), "(a range failed; next pass takes it)")
            return
        st = src.lstat(name)
        if (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns) != (
                a["ino"], a["size"], a["mtime_ns"], a["ctime_ns"]):
            out.count(C.CHANGED)
            out.act("changed", out.path(name), "(during copy; next pass takes it)")
            return
        tgt.publish_stamped(a["tmp"], name, st, src.xattrs(name), src.attrs(name, st))
        published = True
    finally:
        if not published:
            tgt.discard(a["tmp"])
    out.count(C.COPIED)


# an error is the file's, not its directory's
run_finalize = on_both_dirs(_finalize, where=file_path)
