"""The change-feed seam: what every source of changes (fanotify, Lustre changelogs) hands the
engine, and how it says that changes were lost.

A feed reports *dirty directories*, not events: the directory whose entries were created,
deleted, renamed or changed (both parents of a rename), each a chunk of work for the runner
(fsclone.engine.changes). A directory that is new, or was renamed in, is dirty recursively.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol

from fsclone.errors import FscloneError, MessageError
from fsclone.schema import validate_relpath


@dataclass(frozen=True, order=True)
class DirtyDir:
    """A source directory to bring the target's copy of up to date."""

    #: relative to SRC, b"" for SRC itself, no leading or trailing slash
    path: bytes
    #: True: a directory new or renamed in; its whole subtree is synced
    recursive: bool

    def relpath(self) -> str:
        """The path as the chunks carry it (``surrogateescape``, as ``os`` decodes names),
        refused (MessageError) unless it is a safe path below SRC: a path comes from events,
        which is data, and data never leads outside the roots."""
        try:
            return validate_relpath(os.fsdecode(self.path))
        except MessageError as exc:
            raise MessageError(f"a dirty directory's path is not one below SRC ({exc})") \
                from None


def checked(dirs: list[DirtyDir]) -> list[DirtyDir]:
    """``dirs``, each one's path checked (see :meth:`DirtyDir.relpath`): the first unsafe one
    raises MessageError."""
    for d in dirs:
        if not isinstance(d.path, bytes):
            raise MessageError(f"a dirty directory's path is not bytes: {d.path!r}")
        d.relpath()
    return dirs


class FeedGap(FscloneError):
    """Events were lost (a fanotify queue overflow, a changelog user the MDT deregistered, a
    gap in record numbers): the pending record no longer tells everything that changed, and
    only a full ``pass sync`` is safe."""


class ChangeFeed(Protocol):
    """A source of changes below SRC, resumable from a durable cursor."""

    #: events (fanotify) or records (changelogs) read since the feed was made: the
    #: watcher's status shows it
    events: int

    def read(self, timeout: float) -> list[DirtyDir]:
        """What changed since the last read; [] after ``timeout`` seconds without events.
        Raises FeedGap when events were lost."""
        ...

    def cursor(self) -> bytes:
        """Opaque and durable: where a restarted feed resumes (what was read up to now)."""
        ...

    def commit(self, cursor: bytes) -> None:
        """Every DirtyDir read up to ``cursor`` is applied on DST (changelogs: ``lfs
        changelog_clear`` up to it; fanotify: nothing to do)."""
        ...

    def close(self) -> None:
        ...
