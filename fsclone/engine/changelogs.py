"""A Lustre source's changelogs in passes: where a complete sync starts them, how ``pass sync
--changes`` catches up from them, and the clear once a pass's work is on DST.

Set ``CHANGELOG_USERS`` and the source's changelogs are the pair's feed
(fsclone.changes.changelog) in its pending store (fsclone.state.changes):

- a complete ``pass sync`` (not a resume, not a dry run) reads every changelog to its end
  before it walks and saves that cursor: every change after it is in a record still kept,
  and every change before it is in what the walk sees;
- ``pass sync --changes`` reads the records after the cursor into the pending store
  (:func:`replays`), syncs what they name, and only when that pass is done clears them;
- at the end of either, done, ``lfs changelog_clear`` up to the cursor (:func:`settle`). A
  pass that dies before clears nothing: the next reads the same records again, or finds
  their directories still pending.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from fsclone.changes.feed import FeedGap
from fsclone.config import Config
from fsclone.engine.changes import Replay
from fsclone.lifecycle import DONE, Summary
from fsclone.spec import PassSpec
from fsclone.state.changes import ChangeStore

if TYPE_CHECKING:
    from fsclone.changes.changelog import ChangelogFeed

#: the feed's kind in the pending store
KIND = "changelog"


def _feed(cfg: Config, src: str, cursor: bytes | None) -> ChangelogFeed:
    # the changelog reader (its record parser, lfs): loaded by a source with CHANGELOG_USERS only
    from fsclone.changes.changelog import ChangelogFeed

    return ChangelogFeed(cfg.lfs, dict(cfg.changelog_users), src, cursor)


def _full(spec: PassSpec) -> bool:
    return (spec.op == "sync" and not spec.dry_run
            and not (spec.changes or spec.files_from or spec.retry_of))


def replays(cfg: Config) -> dict[str, Replay]:
    """The catch-up of a ``--changes`` pass from the changelogs, when they are configured:
    every record after the stored cursor, as dirty directories in the store."""
    if not cfg.changelog_users:
        return {}

    def catch_up(store: ChangeStore) -> None:
        cursor = store.cursor()
        if not cursor:
            raise FeedGap("no changelog cursor: no complete pass sync read the changelogs")
        feed = _feed(cfg, store.src, cursor)
        try:
            dirs = feed.read(0)
        finally:
            feed.close()
        store.record(dirs, feed.cursor())
    return {KIND: catch_up}


def at_end(cfg: Config, store: ChangeStore) -> ChangelogFeed:
    """A feed at the end of every changelog of the pair's source, reading nothing but record
    numbers: from the stored cursor while it is good (so its user is checked where it was
    left), else afresh. Raises FeedGap or ChangelogError when a changelog cannot be read."""
    stored = store.cursor() if store.feed() == KIND else b""
    try:
        feed = _feed(cfg, store.src, stored or None)
        feed.mark()
    except FeedGap:  # the old cursor is no good: start afresh at the end
        feed = _feed(cfg, store.src, None)
        feed.mark()
    return feed


def mark(cfg: Config, state: Path, spec: PassSpec, note: Callable[[str], None]) -> None:
    """At the start of a complete sync of a source with changelogs: save where every
    changelog ends now as the pair's cursor. A changelog that cannot be read costs the
    ``--changes`` passes until the next complete sync, never this pass: said, not raised."""
    if not (cfg.changelog_users and _full(spec)):
        return
    from fsclone.changes.fidpaths import ChangelogError  # with the reader: see _feed

    store = ChangeStore.open(state, spec.src, spec.dst)
    try:
        if store.watched():  # a watcher's feed keeps the record: not ours to restart
            return
        try:
            cursor = at_end(cfg, store).cursor()
        except (FeedGap, ChangelogError) as exc:
            store.gap(str(exc))
            note(f"changelogs not read ({exc}): --changes needs another complete pass sync")
            return
        store.feed_started(KIND, resumed=False, since=spec.started)
        store.record([], cursor)
    finally:
        store.close()


def settle(cfg: Config, state: Path, spec: PassSpec, summary: Summary,
           note: Callable[[str], None]) -> None:
    """At the end of a complete sync (done, no item errors) on a source with changelogs:
    clear the records up to the stored cursor, whose work is on DST now (after
    fsclone.engine.changes.changes_done). A pass with item errors clears nothing."""
    complete = summary.status == DONE and not summary.error_count
    if not (cfg.changelog_users and complete and (_full(spec) or spec.changes)):
        return
    store = ChangeStore.find(state, spec.src, spec.dst)
    if store is None or store.feed() != KIND or store.watched():
        return  # a watcher's feed clears its own records (fsclone.engine.watch)
    from fsclone.changes.fidpaths import ChangelogError  # with the reader: see _feed

    try:
        cursor = store.cursor()
        feed = _feed(cfg, spec.src, cursor)
        try:
            feed.commit(cursor)
        except FeedGap as exc:
            store.gap(str(exc))
            note(f"changelogs not cleared ({exc}): --changes needs another complete pass sync")
            return
        except ChangelogError as exc:  # nothing lost: the next pass clears them
            note(f"changelogs not cleared yet ({exc})")
            return
        store.record([], feed.cursor())
    finally:
        store.close()
