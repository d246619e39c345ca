"""Which entries a pass leaves alone: age filters (the SDSC tool's OLDEST_DATE/NEWEST_DATE) and
include/exclude globs. Pure logic, no OS calls."""

from __future__ import annotations

import fnmatch
import os
import re

from fsclone.spec import PassSpec
from fsclone.stats import counters as C


class Filters:
    """Decides, from a name and its lstat, whether a pass skips an entry.

    Globs follow rsync's reading: a pattern without '/' matches the entry's name at any depth, a
    pattern with '/' matches its path from the pass root. An include that matches wins over any
    exclude. Age filters apply to non-directories only: directories are always walked.
    """

    def __init__(self, spec: PassSpec) -> None:
        self._excludes = [_compile(p) for p in spec.excludes]
        self._includes = [_compile(p) for p in spec.includes]
        self._newer_than = spec.started - spec.newest if spec.newest else None
        self._older_than = spec.started - spec.oldest if spec.oldest else None
        #: whether any glob or any age filter is set: most passes have none, and skip the calls
        self.globs = bool(self._excludes)
        self.ages = self._newer_than is not None or self._older_than is not None

    def excluded(self, relpath: str, name: str) -> bool:
        if not self._excludes:
            return False
        if any(_match(p, relpath, name) for p in self._includes):
            return False
        return any(_match(p, relpath, name) for p in self._excludes)

    def age_skip(self, st: os.stat_result) -> str | None:
        """The counter to bump when the age filters skip this entry, else None."""
        if self._newer_than is not None and st.st_mtime > self._newer_than:
            return C.SKIP_NEWER
        if self._older_than is not None and st.st_atime < self._older_than:
            return C.SKIP_OLDER
        return None


def _compile(pattern: str) -> tuple[bool, re.Pattern[str]]:
    anchored = "/" in pattern.rstrip("/")
    return anchored, re.compile(fnmatch.translate(pattern.strip("/")))


def _match(pattern: tuple[bool, re.Pattern[str]], relpath: str, name: str) -> bool:
    anchored, regex = pattern
    return bool(regex.match(relpath if anchored else name))
