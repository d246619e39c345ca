"""Ages as people write them ('90d', '12h'), for the age filters: the config's OLDEST and
NEWEST settings and the ``--oldest``/``--newest`` flags read them alike."""

from __future__ import annotations

import re

from fsclone.errors import UsageError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_age(text: str | int | None) -> int | None:
    """'90d', '12h', '30m', '45s', '2w' or plain seconds; 0 means no filter (and, given as a
    flag, overrides the config's setting), None means not set."""
    if text is None:
        return None
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise UsageError(f"bad age {text}: an age is not negative")
        return text
    m = re.fullmatch(r"\s*(\d+)\s*([smhdw]?)\s*", str(text))
    if not m:
        raise UsageError(f"bad age {text!r}: use seconds or a number with s, m, h, d or w")
    return int(m.group(1)) * _UNITS[m.group(2) or "s"]
