"""The Lustre changelog feed: ``lfs changelog`` records of every MDT, as dirty directories.

Per MDT, a registered changelog user (``CHANGELOG_USERS``) keeps the records the MDT may not
purge; the cursor is the last record this feed read of each MDT, and ``commit`` clears (``lfs
changelog_clear MDT USER ENDREC``) only what the runner has applied on DST. A crash before the
clear replays those records: their work is idempotent. Lost records are never guessed at: a
record number missing (the first one read is not the one after the cursor, or two in a read are
not consecutive), a changelog user gone (deregistered by an admin, or by the MDT's garbage
collection of a user that lagged) or one cleared past the cursor by someone else, a line that
is no record, all raise :class:`FeedGap`, and only a full sync is safe then.

What each record makes dirty (paths resolved through :mod:`.fidpaths`, kept when below SRC):
the parent (``p=``) of a CREAT, MKDIR, HLINK, SLINK, MKNOD, UNLNK, RMDIR; a new directory,
recursively; both parents of a rename (RENME, RNMTO, MIGRT) and its new name, recursively when
it is a directory now; for the records of an object's data or attributes (CLOSE, TRUNC, SATTR,
XATTR, MTIME, CTIME, ATIME, LYOUT, HSM, ...) the parent given, or else every parent of the
object (``t=``, each link of a file), and the object itself when it is a directory.
"""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Generator, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass, field

from fsclone.changes.clrecords import ChangelogParseError, Record, parse_lines, record_index
from fsclone.changes.feed import DirtyDir, FeedGap
from fsclone.changes.fidpaths import ChangelogError, FidPaths, run_lfs, stream_lfs
from fsclone.changes.reduce import coalesce
from fsclone.fs.mounts import mount_point_of

#: the records that create or remove a name in their parent
NAMESPACE = frozenset(("CREAT", "MKDIR", "HLINK", "SLINK", "MKNOD", "UNLNK", "RMDIR"))
#: the records that move a name: both parents, and the new name itself
RENAMES = frozenset(("RENME", "RNMTO", "MIGRT"))
#: records that change nothing in the namespace or an object
IGNORED = frozenset(("MARK", "OPEN", "GXATR", "NOPEN"))
#: seconds between reads of an idle changelog while ``read`` waits
POLL = 1.0
#: the FID of no object (a rename that overwrote nothing, a MARK)
ZERO_FID = "0x0:0x0:0x0"
_NO_USER = b"no changelog user"
_OUT_OF_RANGE = b"record out of range"


@dataclass
class _Touched:
    """What one read's records touch, deduplicated (a burst of records names few parents)."""

    parents: set[str] = field(default_factory=set)    # directories whose entries changed
    objects: set[str] = field(default_factory=set)    # objects whose data or attributes did
    named: set[tuple[str, bytes, bool]] = field(default_factory=set)  # (parent, name, is mkdir)

    def add(self, record: Record) -> None:
        kind = record.type
        if kind in IGNORED:
            return
        if kind in RENAMES:
            self.parents.update(f for f in (record.parent, record.source_parent) if f)
            if record.parent and record.name:
                self.named.add((record.parent, record.name, False))
        elif kind in NAMESPACE and record.parent:
            self.parents.add(record.parent)
            if kind == "MKDIR" and record.name:
                self.named.add((record.parent, record.name, True))
        else:
            self.parents.update(f for f in (record.parent,) if f)
            self.objects.add(record.target)

    def fids(self) -> set[str]:
        """Every FID to resolve (the zero FID, "no object", names nothing)."""
        return (self.parents | self.objects | {p for p, _, _ in self.named}) - {ZERO_FID}


def _join(parent: bytes, name: bytes) -> bytes:
    return parent + b"/" + name if parent else name


def _parent_of(path: bytes) -> bytes:
    return path.rpartition(b"/")[0]


class ChangelogFeed:
    """A :class:`~fsclone.changes.feed.ChangeFeed` over the changelogs of ``users``' MDTs.

    ``cursor`` is where an earlier feed on the same roots stopped (its :meth:`cursor`, kept
    in the pass state); None starts with nothing known, for :meth:`mark` only."""

    def __init__(self, lfs: Sequence[str], users: Mapping[str, str], src: str,
                 cursor: bytes | None) -> None:
        self._lfs = tuple(lfs)
        self._users = dict(users)
        self._src = os.path.realpath(src)
        mount = mount_point_of(self._src)
        below = os.path.relpath(self._src, mount).encode() if self._src != mount else b""
        self._paths = FidPaths(self._lfs, mount, b"" if below == b"." else below)
        #: per MDT: the last record read, and the last one cleared (its user's position)
        marks = self._load(cursor) if cursor is not None else dict.fromkeys(users, (0, 0))
        self._read_to = {mdt: read for mdt, (read, _) in marks.items()}
        self._cleared = {mdt: cleared for mdt, (_, cleared) in marks.items()}
        self.events = 0  # records read, since the feed was made

    def _load(self, cursor: bytes) -> dict[str, tuple[int, int]]:
        try:
            found = json.loads(cursor)
            marks = {mdt: (int(found[mdt][0]), int(found[mdt][1])) for mdt in self._users}
        except (ValueError, TypeError, KeyError, IndexError):
            raise FeedGap("the changelog cursor does not name every MDT of CHANGELOG_USERS"
                          ) from None
        if any(not 0 <= cleared <= read for read, cleared in marks.values()):
            raise FeedGap("the changelog cursor is garbled")
        return marks

    def cursor(self) -> bytes:
        return json.dumps({mdt: [self._read_to[mdt], self._cleared[mdt]]
                           for mdt in self._users}, sort_keys=True).encode()

    def read(self, timeout: float) -> list[DirtyDir]:
        """The directories the records since the last read make dirty; waits up to
        ``timeout`` seconds for a record when there is none."""
        deadline = time.monotonic() + timeout
        while True:
            touched, seen = self._read_records()
            left = deadline - time.monotonic()
            if seen or left <= 0:
                return self._dirty(touched)
            time.sleep(min(POLL, left))  # an idle changelog is read every POLL seconds
            if time.monotonic() >= deadline:
                return []

    def mark(self) -> bytes:
        """Move to the end of every changelog, reading nothing but record numbers, and return
        the cursor there: what a complete pass, which walks everything, saves as it starts
        (so no gap, no garbled line matters to it)."""
        for mdt in self._users:
            self._check_user(mdt)
            with closing(self._changelog(mdt, self._read_to[mdt] + 1)) as lines:
                for line in lines:
                    index = record_index(line)
                    self._read_to[mdt] = self._read_to[mdt] if index is None else index
        return self.cursor()

    def commit(self, cursor: bytes) -> None:
        """Clear every MDT's records up to what ``cursor`` had read: their work is applied on
        DST. Raises FeedGap when a changelog user is gone."""
        for mdt, (end, _) in self._load(cursor).items():
            if end > self._cleared[mdt]:
                if not self._clear(mdt, end):
                    raise self._cleared_past(mdt, end)
                self._cleared[mdt] = end

    def close(self) -> None:
        self._paths.forget()

    def _clear(self, mdt: str, end: int) -> bool:
        """``lfs changelog_clear MDT USER END``: True when done, False when the user was
        cleared past END already or the MDT has no record END (``record out of range``).
        END is never 0, which would clear everything."""
        done = run_lfs(self._lfs, "changelog_clear", mdt, self._users[mdt], str(end))
        if done.returncode == 0:
            return True
        if _NO_USER in done.stderr:
            raise FeedGap(f"changelog user {self._users[mdt]} of {mdt} is gone (deregistered)")
        if _OUT_OF_RANGE in done.stderr:
            return False
        raise ChangelogError(f"lfs changelog_clear {mdt}: "
                             f"{done.stderr.decode(errors='replace').strip()}")

    def _check_user(self, mdt: str) -> None:
        """That the MDT still has our changelog user where we left it, by clearing again the
        record cleared last (a no-op then). Without the user the MDT may record nothing at
        all, which no gap would show. A clear committed but not yet in the cursor (a crash
        between the two) leaves the user past it: then at most at the last record read,
        whose work the pending store holds."""
        cleared, read = self._cleared[mdt], self._read_to[mdt]
        if not cleared or self._clear(mdt, cleared):
            return
        if read > cleared and self._clear(mdt, read):
            self._cleared[mdt] = read
            return
        raise self._cleared_past(mdt, read)

    def _cleared_past(self, mdt: str, end: int) -> FeedGap:
        return FeedGap(f"{mdt}: changelog user {self._users[mdt]} was cleared past record {end} "
                       "by someone else: records may be lost")

    def _changelog(self, mdt: str, start: int) -> Generator[bytes, None, None]:
        """The lines ``lfs changelog MDT START`` prints, as it prints them."""
        return stream_lfs(self._lfs, "changelog", mdt, str(start))

    def _read_records(self) -> tuple[_Touched, int]:
        """The records after the last read, of every MDT: what they touch, how many."""
        touched = _Touched()
        seen = 0
        for mdt in self._users:
            self._check_user(mdt)
            last = self._read_to[mdt]
            try:
                with closing(self._changelog(mdt, last + 1)) as lines:
                    for record in parse_lines(lines):
                        if last and record.index != last + 1:
                            raise FeedGap(f"{mdt}: record {record.index} follows {last}: "
                                          "records are missing")
                        touched.add(record)
                        last = record.index
                        seen += 1
            except ChangelogParseError as exc:
                raise FeedGap(f"{mdt}: {exc}") from None
            self._read_to[mdt] = last
        self.events += seen
        return touched, seen

    def _dirty(self, touched: _Touched) -> list[DirtyDir]:
        """The dirty directories below SRC of what a read's records touched."""
        self._paths.forget()
        self._paths.resolve(touched.fids())
        found: list[DirtyDir] = []
        for fid in touched.parents:
            found.extend(DirtyDir(p, False) for p in self._paths.paths(fid))
        for fid in touched.objects:
            for path in self._paths.paths(fid):
                if path:
                    found.append(DirtyDir(_parent_of(path), False))
                if self._is_dir(path) is not False:
                    found.append(DirtyDir(path, False))
        for fid, name, made in touched.named:
            for parent in self._paths.paths(fid):
                path = _join(parent, name)
                if made or self._is_dir(path) is not False:
                    found.append(DirtyDir(path, True))
        return coalesce(found)

    def _is_dir(self, path: bytes) -> bool | None:
        """Whether SRC/``path`` is a directory now: None when it cannot be told (any error
        but its absence), which counts as one: a recursive sync of a file's name is work
        wasted, a renamed-in directory left out would be a change lost."""
        try:
            st = os.lstat(os.path.join(os.fsencode(self._src), path) if path
                          else os.fsencode(self._src))
        except FileNotFoundError:
            return False
        except OSError:
            return None
        return stat.S_ISDIR(st.st_mode)

