"""Renames in a sync: a file the source renamed within a directory is renamed in the target
too, not copied anew under its new name and deleted under its old one.

A sync chunk that lists its directory knows both halves of such a rename: a source name the
target lacks (a new file to the decide step) and a target name the source lacks (planned for
deletion). When the target's file under a planned name is a regular file of one link, the size
and mtime of the source's new file, and (if not empty) the same bytes, it is given the new
name: linked there (which fails, and so changes nothing, if the name was taken meanwhile), then
unlinked from the old one. Its metadata is then compared and mended as any current file's
(fsclone.ops.copy), and the old name is no longer a planned deletion: nothing was removed, no
byte was rewritten. A file the target cannot link (immutable, append-only, no hard links) is
copied anew, and its old name deleted, as before.

The bytes are compared, not trusted to size and mtime, because the two names are two files to
the quick check: what a sync keeps under one name on size and mtime it does not carry over to
another. Under ``--checksum`` and in a dry run the same rule holds (a dry run reads, never
moves)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator

from fsclone.fs import relink
from fsclone.fs.source import SourceDir
from fsclone.fs.target import TargetDir
from fsclone.ops.context import Context, Outcome
from fsclone.ops.delete import ours
from fsclone.stats import counters as C

#: the target files of a new file's size and mtime whose bytes are compared with it, at most
#: (timestamps of a coarse clock make many files of one size share an mtime)
TRIES = 4
#: files of one size and mtime, at most, that are tried in the order of the names most like
#: the new one (``run.log`` for ``run.log.1``); more are tried as they come
SORTED = 256


class Moves:
    """The target files planned for deletion in one sync chunk (``gone``: the planned names,
    regular files or not), as the old names of the source's new files. Each is looked up
    once, at the first new file (a chunk with no new file costs nothing)."""

    __slots__ = ("_exact", "_gone", "_near", "_taken", "ctx", "moved", "names", "out", "src",
                 "tgt")

    def __init__(self, ctx: Context, out: Outcome, src: SourceDir, tgt: TargetDir,
                 gone: Iterable[str]) -> None:
        self.ctx, self.out, self.src, self.tgt = ctx, out, src, tgt
        self._gone = [name for name in gone if not ours(name, False)]
        #: the planned regular files by size, mtime and atime, and by size and mtime (None:
        #: not looked up yet)
        self._exact: dict[tuple[int, int, int], list[tuple[str, os.stat_result]]] | None = None
        self._near: dict[tuple[int, int], list[tuple[str, os.stat_result]]] | None = None
        self._taken: set[str] = set()
        #: old name → new name, of the files moved (or, in a dry run, that would be): the
        #: old names are no longer planned for deletion
        self.moved: dict[str, str] = {}
        #: the new names of the files moved: their metadata is compared in full
        self.names: set[str] = set()

    def take(self, name: str, st: os.stat_result) -> os.stat_result | None:
        """For the source's new regular file ``name`` (lstat ``st``): move the target's file
        that holds its bytes under a planned name to ``name`` and return that file's lstat
        (taken before the move), or None: copy it anew."""
        if st.st_nlink != 1 or not self._gone:
            return None
        tried = 0
        for candidates in self._lists(st):
            if st.st_size and 1 < len(candidates) <= SORTED:  # the likeliest popped first
                candidates.sort(key=lambda c: _alike(c[0], name))
            while candidates and tried < TRIES:
                old, dst = candidates.pop()
                if old in self._taken:
                    continue  # taken from the other list
                tried += 1
                try:
                    if st.st_size and not relink.same_bytes(self.src, name, self.tgt, old, dst):
                        candidates.insert(0, (old, dst))  # another file's, perhaps: last
                        continue
                    dropped = self.ctx.spec.dry_run or relink.move(self.tgt, old, name)
                except OSError:
                    return None  # copied anew, the old name deleted as planned
                self._taken.add(old)
                return self._moved(old, name, dst, dropped)
        return None

    def _moved(self, old: str, name: str, dst: os.stat_result, dropped: bool,
               ) -> os.stat_result:
        if dropped:
            self.moved[old] = name
        self.names.add(name)
        self.out.count(C.MOVED)
        self.out.act("move", self.out.path(old), f"-> {self.out.path(name)}")
        return dst

    def _lists(self, st: os.stat_result) -> Iterator[list[tuple[str, os.stat_result]]]:
        """The planned files of ``st``'s size and mtime (as the source has it, then as the
        target holds it; a ``--modify-window``'s near times are not looked for): first those
        of its atime too (among files of a coarse clock's shared mtime, most likely the one
        it was), then all."""
        if self._exact is None:
            self._index()
        assert self._exact is not None and self._near is not None
        fit = self.ctx.times.fit
        size, mtime, atime = st.st_size, st.st_mtime_ns, st.st_atime_ns
        for found in (self._exact.get((size, mtime, atime)),
                      self._exact.get((size, fit(mtime), fit(atime))),
                      self._near.get((size, mtime)), self._near.get((size, fit(mtime)))):
            if found:
                yield found

    def _index(self) -> None:
        """Look up the planned names: the regular files of one link, by size, mtime and
        atime, and by size and mtime."""
        self._exact, self._near = {}, {}
        for name in self._gone:
            try:
                dst = self.tgt.lookup(name)
            except OSError:
                continue  # the unlink phase lists it
            if dst is not None and stat.S_ISREG(dst.st_mode) and dst.st_nlink == 1:
                key = (dst.st_size, dst.st_mtime_ns)
                self._near.setdefault(key, []).append((name, dst))
                self._exact.setdefault((*key, dst.st_atime_ns), []).append((name, dst))


def _alike(a: str, b: str) -> int:
    """How many leading characters two names share."""
    n = 0
    for x, y in zip(a, b):  # noqa: B905 -- the shorter name ends the count
        if x != y:
            break
        n += 1
    return n
