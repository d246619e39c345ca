"""Which feed a watcher reads, and how a start and a full sync place it.

With ``CHANGELOG_USERS`` set the source is a Lustre one, whose clients' changes fanotify does
not see: the watcher reads its changelogs (fsclone.changes.changelog), as ``pass sync
--changes`` does (fsclone.engine.changelogs). Else it reads fanotify
(fsclone.changes.fanotify).

The two differ at a start. Fanotify replays nothing: every start is a new unbroken run, and
a full sync follows. Changelogs keep their records until cleared: a watcher started again
resumes from the stored cursor, and reads what changed while it was down. A changelog feed
that lost records (a FeedGap) is not read again until the full sync that answers the gap
places it anew at the changelogs' end (:meth:`WatchFeed.restart`), before its walk starts.
"""

from __future__ import annotations

from fsclone.changes.changelog import POLL, ChangelogFeed
from fsclone.changes.fanotify import FanotifyFeed
from fsclone.changes.feed import ChangeFeed, DirtyDir, FeedGap
from fsclone.config import Config
from fsclone.engine import changelogs
from fsclone.state.changes import ChangeStore

FANOTIFY = "fanotify"
#: how long one read of fanotify waits for events (the kernel wakes it on one)
_FANOTIFY_WAIT = 0.2


class WatchFeed:
    """The watcher's feed (a :class:`~fsclone.changes.feed.ChangeFeed`), and what its kind
    means to the loop."""

    def __init__(self, cfg: Config, store: ChangeStore) -> None:
        self.cfg, self.store = cfg, store
        self.kind = changelogs.KIND if cfg.changelog_users else FANOTIFY
        #: it catches up from its cursor: a start needs no full sync (ChangeStore.trust)
        self.replayable = self.kind == changelogs.KIND
        #: how long one read waits for events (fanotify: in the kernel), and how long the
        #: reader waits after a read that found none (changelogs: ``lfs changelog`` polled)
        self.wait, self.idle = (0.0, POLL) if self.replayable else (_FANOTIFY_WAIT, 0.0)
        self._done = 0  # events of the feeds replaced
        self._feed: ChangeFeed | None = None if self.replayable else FanotifyFeed(store.src)
        if self.replayable and store.feed() == changelogs.KIND and store.cursor():
            try:
                self._feed = ChangelogFeed(cfg.lfs, dict(cfg.changelog_users), store.src,
                                           store.cursor())
            except FeedGap as exc:  # a garbled cursor: a full sync places the feed anew
                store.gap(str(exc))

    @property
    def resumed(self) -> bool:
        """It goes on from the stored cursor (nothing lost while no watcher ran)."""
        return self.replayable and self._feed is not None

    @property
    def events(self) -> int:
        return self._done + (self._feed.events if self._feed is not None else 0)

    def read(self, timeout: float) -> list[DirtyDir]:
        """The feed's read; a changelog feed not placed (none yet, or after a gap) reads
        nothing."""
        if self._feed is None:
            return []
        try:
            return self._feed.read(timeout)
        except FeedGap:
            if self.replayable:  # read again from where it broke, it would break again
                self._drop()
            raise

    def cursor(self) -> bytes:
        return self._feed.cursor() if self._feed is not None else b""

    def commit(self, cursor: bytes) -> None:
        """Clear what ``cursor`` read (changelogs); a FeedGap drops the feed until a full
        sync places it anew."""
        if self._feed is None or not cursor:
            return
        try:
            self._feed.commit(cursor)
        except FeedGap:
            self._drop()
            raise

    def restart(self) -> bytes:
        """Before a full sync's walk: a changelog feed placed at the end of every changelog,
        its cursor returned (every later change is in a record the feed reads, every earlier
        one in what the walk sees); fanotify, which goes on through a gap: b"". Raises
        FeedGap or ChangelogError when a changelog cannot be read."""
        if not self.replayable:
            return b""
        self._drop()
        self._feed = changelogs.at_end(self.cfg, self.store)
        return self._feed.cursor()

    def _drop(self) -> None:
        if self._feed is not None:
            self._done += self._feed.events
            self._feed.close()
            self._feed = None

    def close(self) -> None:
        self._drop()
