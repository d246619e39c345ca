"""The runner of change-driven sync: a ``sync`` pass over the dirty directories the pending
store holds for the roots (fsclone.state.changes) instead of a walk from the root.

Each dirty directory becomes one chunk through the usual coordinator and transports: a
recursive one a plain ``sync`` chunk (its whole subtree), any other a *shallow* one (the
``shallow`` arg: its directory listed and mended, deletions planned and guarded as any sync
plans them, its subdirectories' own metadata mended but not walked; a subdirectory the target
lacks is made and copied whole). Before that, each path is checked (data from events: never
``..``, never absolute) and resolved below both roots one component at a time without following
symlinks (fsclone.fs.dirs): a directory gone from the source, or whose way down the target
lacks or holds as a non-directory, is handled by its nearest ancestor present as a directory on
both sides, as a shallow chunk (which plans the deletion, or makes the missing directory and
copies it whole). One below an excluded directory, or on another filesystem with
``--one-file-system``, is left: a full sync's walk would not go there either.

Where fewer shallow chunks than the pass runs at once (its transport's slots) are dirty, each
is told to spread (the ``spread`` arg): to hand out its listing in as many slices, so that one
hot directory's entries are worked on with every slot, not one at a time. On a network or
parallel filesystem every entry is a dozen round trips; ten dirty directories of a thousand
files, each one chunk, would keep ten requests in flight of a depth of 64.

The pass takes the pending set when it starts and removes it from the store only once it is
done (see fsclone.engine.launch); a directory dirtied again meanwhile stays pending.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

from fsclone.changes.feed import DirtyDir, FeedGap, checked
from fsclone.changes.reduce import coalesce
from fsclone.chunk import Chunk
from fsclone.engine.retry import Seed
from fsclone.errors import UsageError
from fsclone.filters import Filters
from fsclone.fs import dirs
from fsclone.lifecycle import DONE, Summary
from fsclone.schema import MAX_SPREAD
from fsclone.spec import PassSpec
from fsclone.state.changes import ChangeStore

#: the feeds that can catch up from their cursor with no watcher running, by the kind a feed
#: records in the store (``ChangeStore.feed_started``): called with the store before a
#: ``--changes`` pass takes the pending set, it records what changed since the cursor (and
#: raises FeedGap when that cannot be known). A feed not here (fanotify) sees nothing while no
#: watcher runs, so a ``--changes`` pass on its record needs its watcher running.
Replay = Callable[[ChangeStore], None]
REPLAYS: dict[str, Replay] = {}

#: the chunk arg of a dirty directory that is not walked (see fsclone.ops.copy)
SHALLOW = "shallow"
#: the chunk arg of a shallow chunk that hands out its listing in this many slices
SPREAD = "spread"


def changes_seed(state: Path, spec: PassSpec, replays: Mapping[str, Replay] = REPLAYS,
                 slots: int = 1) -> Seed:
    """The chunks of a ``--changes`` pass on the spec's (resolved) roots, taken from their
    pending store; refused, with one line, when no trustworthy record exists. ``replays``:
    the feeds that can catch up, as configured for this run (fsclone.engine.changelogs);
    ``slots``: the chunks the pass runs at once."""
    store = ChangeStore.find(state, spec.src, spec.dst)
    if store is None:
        raise UsageError("--changes: no watcher has recorded changes on these roots: run a "
                         "full pass sync")
    try:
        replay = replays.get(store.feed())
        if replay is not None and not store.watched():
            try:
                replay(store)
            except FeedGap as exc:
                store.gap(str(exc))
        trust = store.trust(replayable=replay is not None)
        if not trust.ok:
            raise UsageError(f"--changes: {trust.why}")
        taken = store.take(spec.id)
    finally:
        store.close()
    return Seed(chunks_for(spec, taken, slots), [])


def chunks_for(spec: PassSpec, dirty: list[DirtyDir], slots: int = 1) -> list[Chunk]:
    """One sync chunk per directory left once ``dirty`` is resolved (see the module's doc)
    and coalesced, the shallow ones spread over ``slots`` when fewer. A path that is not a
    safe relative one refuses the pass (MessageError)."""
    with dirs.opened(_root(spec.src)) as sfd, dirs.opened(_root(spec.dst)) as dfd:
        scope = _Scope(spec, sfd, dfd)
        resolved = [r for d in checked(dirty) if (r := scope.resolve(d)) is not None]
    found = coalesce(resolved)
    shallow = sum(not d.recursive for d in found)
    spread = min(-(-slots // shallow), MAX_SPREAD) if shallow else 1
    args: dict[str, object] = {SHALLOW: True, SPREAD: spread} if spread > 1 else {SHALLOW: True}
    return [Chunk(op="sync", path=d.relpath(), args={} if d.recursive else dict(args))
            for d in found]


def _root(path: str) -> int:
    try:
        return dirs.open_root(path)
    except OSError as exc:
        raise UsageError(f"--changes: {path}: {exc.strerror}") from None


class _Scope:
    """Where a dirty directory's chunk goes, walked down from both roots as a full sync's walk
    would come: never through a symlink, an excluded directory or (``--one-file-system``)
    into another filesystem."""

    def __init__(self, spec: PassSpec, sfd: int, dfd: int) -> None:
        self.filters = Filters(spec)
        self.sfd, self.dfd = sfd, dfd
        self.dev = os.fstat(sfd).st_dev if spec.one_file_system else None

    def resolve(self, d: DirtyDir) -> DirtyDir | None:
        """``d``; or its nearest ancestor present as a directory in both trees, not
        recursive; or None where the walk would not come (nothing to do)."""
        parts = d.path.split(b"/") if d.path else []
        fds = [self.sfd, self.dfd]
        try:
            for depth, part in enumerate(parts):
                rel = os.fsdecode(b"/".join(parts[:depth + 1]))
                if self.filters.globs and self.filters.excluded(rel, True):
                    return None
                opened: list[int] = []
                try:
                    for fd in fds[-2:]:
                        opened.append(dirs.open_dir(os.fsdecode(part), fd))
                except OSError:  # gone, not a directory, a symlink: the parent's chunk sees it
                    for fd in opened:
                        os.close(fd)
                    return DirtyDir(b"/".join(parts[:depth]), False)
                fds.extend(opened)
                if self.dev is not None and os.fstat(opened[0]).st_dev != self.dev:
                    return None
            return d
        finally:
            for fd in fds[2:]:
                os.close(fd)


def changes_done(state: Path, spec: PassSpec, summary: Summary) -> None:
    """At a pass's end. A complete pass (done, no item errors, not a dry run): a ``--changes``
    one removes what it took from the pending store; a full ``sync`` marks the pair's record
    trustworthy from when it started (if a feed recorded since then: fsclone.state.changes).
    A pass with item errors changes nothing here: what failed is still to be done."""
    if summary.status != DONE or summary.error_count or spec.dry_run or spec.op != "sync" \
            or spec.files_from or spec.retry_of:
        return
    store = ChangeStore.find(state, spec.src, spec.dst)
    if store is None:
        return
    try:
        if spec.changes:
            store.applied(spec.id)
        else:
            store.synced(spec.started)
    finally:
        store.close()
