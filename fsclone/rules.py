"""rsync's filter rules, as fsclone reads them: the syntax of one rule and of a file of them,
and their translation into one regular expression. Pure logic, no OS calls.

A rule is kept as rsync writes it: ``"- PATTERN"`` excludes, ``"+ PATTERN"`` includes, ``"!"``
clears the rules before it. Rules apply in order and the first whose pattern matches decides;
an entry no rule matches is included. A pattern follows rsync's wildmatch, on the bytes of
the path below the pass root: ``*`` matches within one path component, ``**`` across ``/``,
``?`` one byte other than ``/``, ``[...]`` one byte of a class (``[!...]`` or ``[^...]``
negated, ``[:alpha:]`` and the other POSIX classes), ``\\`` quotes the next character (in a
pattern with wildcards only). A pattern that starts with ``/`` is anchored at the pass root;
one that holds another ``/`` (or a ``**``) matches the end of the path at a component
boundary, one without matches the entry's name; a trailing ``/`` matches directories only;
``DIR/***`` matches the directory DIR and everything in it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

EXCLUDE, INCLUDE, CLEAR = "- ", "+ ", "!"

#: the POSIX classes wildmatch knows, as ASCII (rsync matches bytes, in the C locale)
_CLASSES = {
    b"alnum": rb"a-zA-Z0-9", b"alpha": rb"a-zA-Z", b"blank": rb" \t", b"cntrl": rb"\x00-\x1f\x7f",
    b"digit": rb"0-9", b"graph": rb"!-~", b"lower": rb"a-z", b"print": rb" -~",
    b"punct": rb"!-/:-@\[-`{-~", b"space": rb" \t\n\r\f\v", b"upper": rb"A-Z",
    b"xdigit": rb"0-9A-Fa-f",
}
#: a pattern wildmatch never matches (an unclosed class: rsync matches nothing)
_NEVER = rb"(?!)"


class BadRule(ValueError):
    """A rule fsclone cannot read (only ``-``, ``+`` and ``!`` rules are known)."""


def rule(text: str, sign: str | None) -> str | None:
    """``text`` as a rule: a pattern of ``--exclude`` (``sign`` EXCLUDE) or ``--include``
    (INCLUDE), where, as in rsync, a leading ``"- "`` or ``"+ "`` gives the pattern its own
    sign and ``"!"`` clears; or, with ``sign`` None, a ``--filter`` rule, which must say.
    None for an empty pattern, which rsync ignores."""
    if text == CLEAR:
        return CLEAR
    if text[:2] in (EXCLUDE, INCLUDE):
        sign, text = text[:2], text[2:]
    elif sign is None:
        raise BadRule(f"{text!r}: a rule is '- PATTERN', '+ PATTERN' or '!'")
    return sign + text if text else None


def from_lines(text: str, sign: str | None) -> list[str]:
    """The rules of an ``--exclude-from`` or ``--include-from`` file: one pattern a line
    (a line ends at ``\\n`` or ``\\r``, as in rsync); empty lines and lines that start with
    ``;`` or ``#`` are skipped, other whitespace is part of the pattern."""
    found = (rule(line, sign) for line in re.split(r"[\r\n]", text)
             if line and line[0] not in ";#")
    return [r for r in found if r]


def effective(rules: Sequence[str]) -> tuple[str, ...]:
    """The rules that can decide, in order: those after the last ``!``, each once (a later
    copy of a rule never matches first). Two lists with the same effective rules select the
    same entries."""
    last = max((i for i, r in enumerate(rules) if r == CLEAR), default=-1)
    return tuple(dict.fromkeys(rules[last + 1:]))


def compile_rules(rules: Sequence[str]) -> tuple[re.Pattern[bytes] | None,
                                                re.Pattern[bytes] | None]:
    """The regular expressions that decide non-directories and directories: one alternative
    per rule, named ``e<n>`` (exclude) or ``i<n>`` (include), so that a full match's
    ``lastgroup`` names the first rule that matches (alternatives are tried in order). None
    for a kind no exclude can ever reach: nothing of it is excluded."""
    parts = [part for r in effective(rules) for part in _parts(r)]
    return _join(parts, dirs=False), _join(parts, dirs=True)


#: one alternative: whether it excludes, its regular expression, whether it matches
#: directories only
_Part = tuple[bool, bytes, bool]


def _join(parts: Sequence[_Part], dirs: bool) -> re.Pattern[bytes] | None:
    chosen = [(excludes, regex) for excludes, regex, dir_only in parts if dirs or not dir_only]
    while chosen and not chosen[-1][0]:  # trailing includes decide nothing
        chosen.pop()
    if not chosen:
        return None
    return re.compile(b"|".join(b"(?P<%c%d>%s)" % (b"e" if excludes else b"i", n, regex)
                                for n, (excludes, regex) in enumerate(chosen)), re.DOTALL)


def _parts(text: str) -> list[_Part]:
    """One rule's alternatives (two for ``DIR/***``)."""
    excludes = text.startswith(EXCLUDE)
    pattern = os.fsencode(text[2:])
    dir_only = len(pattern) > 1 and pattern.endswith(b"/")
    if dir_only:
        pattern = pattern[:-1]
    anchored = pattern.startswith(b"/")
    if anchored:
        pattern = pattern[1:]
    # unanchored, a pattern matches a tail of the path that starts at a component: for one
    # without '/' or '**' that is the name, and otherwise rsync's reading too
    lead = b"" if anchored else b"(?:.*/)?"
    if not _wild(pattern):
        return [(excludes, lead + re.escape(pattern), dir_only)]
    if pattern.endswith(b"/***"):  # the directory itself, as DIR/; and all in it, as DIR/**
        return [(excludes, lead + _translate(pattern[:-4]), True),
                (excludes, lead + _translate(pattern[:-1]), dir_only)]
    return [(excludes, lead + _translate(pattern), dir_only)]


def _wild(pattern: bytes) -> bool:
    return any(c in pattern for c in b"*?[")


def _translate(pattern: bytes) -> bytes:
    """A wildcard pattern as a regular expression (rsync's wildmatch, on bytes)."""
    out: list[bytes] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == ord("*"):
            j = i
            while j < n and pattern[j] == ord("*"):
                j += 1
            out.append(b".*" if j - i > 1 else b"[^/]*")
            i = j
            continue
        if c == ord("?"):
            out.append(b"[^/]")
        elif c == ord("\\") and i + 1 < n:
            i += 1
            out.append(re.escape(pattern[i:i + 1]))
        elif c == ord("["):
            klass, i = _class(pattern, i)
            if klass is None:
                return _NEVER
            out.append(klass)
            continue
        else:
            out.append(re.escape(pattern[i:i + 1]))
        i += 1
    return b"".join(out)


def _class(pattern: bytes, start: int) -> tuple[bytes | None, int]:
    """The class that opens at ``pattern[start]`` as a regular expression, and where the
    pattern goes on; None when it never closes (wildmatch then matches nothing). Read as
    wildmatch reads it: the first member may be ``]``, a ``-`` between two members makes a
    range, and a class never matches ``/``."""
    i, n = start + 1, len(pattern)
    negated = i < n and pattern[i] in b"!^"
    i += negated
    members: list[bytes] = []
    prev: int | None = None
    first = True
    while i < n and (first or pattern[i] != ord("]")):
        first = False
        c = pattern[i]
        if c == ord("\\"):
            i += 1
            if i == n:
                return None, n
            prev = pattern[i]
            members.append(_member(prev))
        elif c == ord("-") and prev is not None and i + 1 < n and pattern[i + 1] != ord("]"):
            i += 1
            if pattern[i] == ord("\\"):
                i += 1
                if i == n:
                    return None, n
            members[-1] = _member(prev) + b"-" + _member(pattern[i]) \
                if prev <= pattern[i] else b""
            prev = None
        elif c == ord("[") and pattern[i + 1:i + 2] == b":":
            close = pattern.find(b"]", i + 2)
            if close < 0:
                return None, n
            if close - 1 < i + 2 or pattern[close - 1] != ord(":"):  # no ":]": a plain '['
                prev = c
                members.append(_member(c))
            else:
                if pattern[i + 2:close - 1] not in _CLASSES:
                    return None, n
                members.append(_CLASSES[pattern[i + 2:close - 1]])
                prev = None
                i = close
        else:
            prev = c
            members.append(_member(c))
        i += 1
    if i >= n:
        return None, n
    inside = b"".join(members)
    if not inside:  # an empty range: the class matches nothing (or, negated, any byte)
        return (b"[^/]" if negated else _NEVER), i + 1
    return (b"[^/" + inside + b"]" if negated else b"(?!/)[" + inside + b"]"), i + 1


def _member(byte: int) -> bytes:
    return b"\\x%02x" % byte
