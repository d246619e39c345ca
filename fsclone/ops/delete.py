"""The delete pass, in two phases so that a guard can refuse before anything is removed.

Phase 1 (``delete`` chunks, or the listing chunk of a ``sync``) compares a source directory that
was listed completely with its target and plans the target entries missing from the source.
Phase 2 (``unlink`` chunks, once the coordinator's guards passed) removes them, checking each
name is still absent from the source, and restores the parent directory's times.
A source directory that cannot be listed plans nothing, and nothing below it is visited.
"""

from __future__ import annotations

from fsclone.fs import dirs
from fsclone.ops.context import TMP_PREFIX, Context, Outcome, on_both_dirs
from fsclone.ops.dirmeta import apply_dir_meta
from fsclone.stats import counters as C


def plan_deletes(ctx: Context, out: Outcome, dfd: int, source_names: set[str]) -> dict[str, bool]:
    """Plan removal of the target entries whose names the complete source listing lacks.
    Excluded names and the pass's own staging directory are never planned. Returns the target
    listing (name: is a directory), from d_type: no stat per target entry."""
    chunk = out.chunk
    target = dirs.list_kinds(dfd)
    planned: list[str] = []
    entries = 0
    for name, is_dir in target.items():
        if name in source_names or (not chunk.path and name == ctx.staging):
            continue
        rel = out.path(name)
        if ctx.filters.excluded(rel, name):
            continue
        planned.append(name)
        if name.startswith(TMP_PREFIX):
            continue  # our own leftovers: removed, but not news to anyone
        n = dirs.count_tree(dfd, name, is_dir)
        entries += n
        out.act("delete", rel, f"({n} entries)" if n > 1 else "")
    if planned:
        out.result.deletions.append((chunk.path, tuple(planned), entries))
        out.count(C.PLANNED_DELETES, entries)
    return target


@on_both_dirs
def run_delete(ctx: Context, out: Outcome, sfd: int, dfd: int) -> None:
    """Phase 1: plan this directory's deletions, and walk on into directories on both sides."""
    kinds = dirs.list_kinds(sfd)  # raises unless the listing is complete
    out.count(C.SCANNED, len(kinds))
    target = plan_deletes(ctx, out, dfd, set(kinds))
    for name, is_dir in target.items():
        rel = out.path(name)
        if kinds.get(name) and is_dir and not ctx.filters.excluded(rel, name):
            out.child("delete", rel)


@on_both_dirs
def run_unlink(ctx: Context, out: Outcome, sfd: int, dfd: int) -> None:
    """Phase 2: remove the planned names still absent from the source, restore the times."""
    removed = 0
    for name in out.chunk.names or ():
        rel = out.path(name)
        try:
            if dirs.lstat_at(name, sfd) is not None:
                out.act("kept", rel, "(back in the source)")
                continue
            removed += dirs.remove_tree_at(dfd, name)
        except FileNotFoundError:
            continue
        except OSError as exc:
            out.fail(rel, exc)
    out.count(C.DELETED, removed)
    if removed:
        apply_dir_meta(ctx, out, out.chunk.path, sfd, dfd)
