"""Counting and removing a target subtree planned for deletion, spread over the workers like the
copy walk: one chunk per target directory, so no worker walks a whole subtree and nothing
recurses as deep as the tree.

``count`` (planning, in the walk phase): a chunk lists one target directory of a planned
subtree, adds its entries to the plan as a deletion row without names (so the plan's total,
which the coordinator checks ``--max-delete`` against once the walk is drained, holds them) and
emits a ``count`` chunk per subdirectory.

``prune`` (removal, in the unlink phase): a chunk lists one target directory, unlinks its
non-directories (a huge directory's in slices, chunks of their own) and emits a ``prune`` chunk
per subdirectory, all in a barrier whose ``rmdir`` chunk removes the emptied directory and
takes over its place in the barrier of the directory above: bottom up, until the barrier of the
unlink chunk that started it restores the times of the directory the subtree was in. The source
was checked once, by that unlink chunk, before the removal started.

Neither crosses into another filesystem mounted in the subtree: ``count`` lists its mount point
as an item error, ``prune`` leaves it (and so the directories above it) in place.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterable

from fsclone.chunk import Chunk, Group, Result, join, new_id
from fsclone.fs import dirs, remove
from fsclone.ops.context import Context, Outcome
from fsclone.ops.mountguard import subdirs_on_fs
from fsclone.stats import counters as C

TargetBody = Callable[[Context, Outcome, int], None]


def on_target_dir(body: TargetBody) -> Callable[[Context, Chunk], Result]:
    """Make an op from ``body(ctx, out, dfd)`` on the chunk's target directory alone (a subtree
    planned for deletion has no source side). A directory already gone was removed by an
    earlier run of the chunk; any other OS error is an item error at the directory."""

    def run(ctx: Context, chunk: Chunk) -> Result:
        out = Outcome(ctx, chunk)
        try:
            assert ctx.dst_root is not None
            with dirs.opened(dirs.open_path(ctx.dst_root, chunk.path)) as dfd:
                body(ctx, out, dfd)
        except FileNotFoundError:
            pass
        except OSError as exc:
            out.fail(chunk.path, exc)
        return out.result

    run.__doc__ = body.__doc__
    return run


#: most levels of a chain (directories with one subdirectory each: nothing to spread) that one
#: chunk walks down itself, one fd open at a time, before it hands the rest to a chunk of its
#: own: a deep chain costs a chunk per CHAIN levels, not a chunk and a path's opens per level
CHAIN = 64

Visit = Callable[[int, str], list[str]]


def walk_chain(out: Outcome, dfd: int, visit: Visit) -> tuple[str, list[str], list[str]]:
    """``visit(fd, path)`` the chunk's directory, and below it while a directory has exactly
    one subdirectory, up to CHAIN levels; ``visit`` returns the subdirectories. Returns the
    last directory visited, the names of the chain down to it, and its subdirectories, for
    chunks of their own. A directory below the chunk's that cannot be listed is an item error
    at its path and ends the walk."""
    path, fd = out.chunk.path, dfd
    chain: list[str] = []
    try:
        while True:
            try:
                subdirs = visit(fd, path)
            except OSError as exc:
                if fd == dfd:
                    raise
                out.fail(path, exc)
                return path, chain, []
            if len(subdirs) != 1 or len(chain) == CHAIN:
                return path, chain, subdirs
            try:
                sub = dirs.open_dir(subdirs[0], fd)
            except OSError:
                return path, chain, subdirs  # its own chunk lists the error
            if fd != dfd:
                os.close(fd)
            fd, path = sub, join(path, subdirs[0])
            chain.append(subdirs[0])
    finally:
        if fd != dfd:
            os.close(fd)


@on_target_dir
def run_count(ctx: Context, out: Outcome, dfd: int) -> None:
    """Plan the entries of a directory of a subtree planned for deletion (and of the chain
    below it), and hand the subdirectories to ``count`` chunks."""

    def visit(fd: int, path: str) -> list[str]:
        kinds = _planned(ctx, path, dirs.list_kinds(fd))
        if kinds:
            out.result.deletions.append((path, (), len(kinds)))
            out.count(C.PLANNED_DELETES, len(kinds))
        for name in kinds:
            out.act("delete", join(path, name))
        return subdirs_on_fs(out, fd, path, kinds, report=True)

    path, _, subdirs = walk_chain(out, dfd, visit)
    for name in subdirs:
        out.child("count", join(path, name))


def _planned(ctx: Context, path: str, kinds: dict[str, bool]) -> dict[str, bool]:
    """The entries of a doomed directory that go: an excluded one is never deleted (it keeps
    its directories, whose removal then stops there)."""
    if not ctx.filters.globs:
        return kinds
    return {name: is_dir for name, is_dir in kinds.items()
            if not ctx.filters.excluded(join(path, name), is_dir)}


def prune(path: str, group: str) -> Chunk:
    """The chunk that removes the target directory ``path`` and everything below it, one
    member of barrier ``group``."""
    return Chunk(op="prune", path=path, group=group)


@on_target_dir
def run_prune(ctx: Context, out: Outcome, dfd: int) -> None:
    """Remove the non-directories of a directory (and of the chain below it) and hand the
    subdirectories to chunks of their own; the directories go, bottom up, once those are done
    (``rmdir``), or at once when there are none."""
    chunk = out.chunk
    if chunk.names is not None:  # a slice of a huge directory's non-directories
        dirs.make_writable(dfd)
        _unlink(ctx, out, dfd, chunk.path, chunk.names)
        return
    step = ctx.spec.dir_slice
    group = new_id()
    members: list[Chunk] = []

    def visit(fd: int, path: str) -> list[str]:
        dirs.make_writable(fd)
        kinds = _planned(ctx, path, dirs.list_kinds(fd))
        files = [name for name, is_dir in kinds.items() if not is_dir]
        members.extend(Chunk(op="prune", path=path, names=tuple(files[i:i + step]), group=group)
                       for i in range(step, len(files), step))
        _unlink(ctx, out, fd, path, files[:step])
        return subdirs_on_fs(out, fd, path, kinds, report=False)

    path, chain, subdirs = walk_chain(out, dfd, visit)
    members += [prune(join(path, name), group) for name in subdirs]
    if members:
        out.result.children.extend(members)
        then = Chunk(op="rmdir", path=chunk.path, names=tuple(chain), group=chunk.group)
        out.result.groups.append(Group(group, len(members), then))
    else:
        remove_chain(ctx, out, chunk.path, chain)


def _unlink(ctx: Context, out: Outcome, dfd: int, path: str, names: Iterable[str]) -> None:
    removed = 0
    for name in names:
        try:
            remove.unlink(name, dfd, ctx.dst_flags)
            removed += 1
        except FileNotFoundError:
            continue
        except OSError as exc:
            out.fail(join(path, name), exc)
    out.count(C.DELETED, removed)


def remove_chain(ctx: Context, out: Outcome, path: str, chain: list[str]) -> None:
    """Remove the emptied directory ``path/chain[0]/.../chain[-1]``, then each directory above
    it up to ``path`` itself. Parts already gone (a redone chunk) are skipped; the first that
    cannot go is an item error, and the ones above it stay."""
    assert ctx.dst_root is not None
    parent, _, name = path.rpartition("/")
    names = [name, *chain]
    try:
        fds = [dirs.open_path(ctx.dst_root, parent)]
    except FileNotFoundError:
        return
    except OSError as exc:
        out.fail(parent or ".", exc)
        return
    try:
        for sub in names[:-1]:
            try:
                fds.append(dirs.open_dir(sub, fds[-1]))
            except OSError:
                break  # gone already (a redone chunk), or its rmdir below says why not
        for level in reversed(range(len(fds))):
            try:
                remove.rmdir(names[level], fds[level], ctx.dst_flags)
            except FileNotFoundError:
                continue
            except OSError as exc:
                if exc.errno == errno.ENOTEMPTY:  # it holds excluded entries (or new ones)
                    out.act("kept", "/".join([path, *chain[:level]]), "(not empty)")
                    return
                out.fail("/".join([path, *chain[:level]]), exc)
                return
            out.count(C.DELETED)
    finally:
        for fd in fds:
            os.close(fd)


def run_rmdir(ctx: Context, chunk: Chunk) -> Result:
    """A pruned directory and the chain its chunk walked down, once everything below is
    gone."""
    out = Outcome(ctx, chunk)
    remove_chain(ctx, out, chunk.path, list(chunk.names or ()))
    return out.result
