"""Which entries a pass leaves alone: age filters (the SDSC tool's OLDEST_DATE/NEWEST_DATE) and
rsync's include/exclude rules. Pure logic, no OS calls."""

from __future__ import annotations

import os

from fsclone.rules import compile_rules
from fsclone.spec import PassSpec
from fsclone.stats import counters as C


class Filters:
    """Decides, from a path and its lstat, whether a pass skips an entry.

    The pass's filter rules are rsync's (fsclone.rules): in order, first match wins, and an
    entry is matched by its path below the pass root, as bytes. An excluded directory is not
    walked, so nothing below it is seen: excluded too, as in rsync. Age filters apply to
    non-directories only: directories are always walked.
    """

    def __init__(self, spec: PassSpec) -> None:
        self._files, self._dirs = compile_rules(spec.filter_rules)
        self._newer_than = spec.started - spec.newest if spec.newest else None
        self._older_than = spec.started - spec.oldest if spec.oldest else None
        #: whether any rule can exclude or any age filter is set: most passes have none, and
        #: skip the calls
        self.globs = self._files is not None or self._dirs is not None
        self.ages = self._newer_than is not None or self._older_than is not None

    def excluded(self, relpath: str, is_dir: bool) -> bool:
        """Whether the rules exclude the entry at ``relpath`` (below the pass root)."""
        regex = self._dirs if is_dir else self._files
        if regex is None:
            return False
        found = regex.fullmatch(os.fsencode(relpath))
        return found is not None and found.lastgroup is not None and found.lastgroup[0] == "e"

    def age_skip(self, st: os.stat_result) -> str | None:
        """The counter to bump when the age filters skip this entry, else None."""
        if self._newer_than is not None and st.st_mtime > self._newer_than:
            return C.SKIP_NEWER
        if self._older_than is not None and st.st_atime < self._older_than:
            return C.SKIP_OLDER
        return None
