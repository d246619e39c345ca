"""The values of options: parsers (from config.py, the environment or a flag), the click types
of flags that need a check of their own, and how a value of the request compares and spells
in the resume check (fsclone.options declares which option uses which)."""

from __future__ import annotations

import math
import os
import re
import shlex
from collections.abc import Callable, Mapping
from typing import Any

import click

from fsclone.ages import parse_age
from fsclone.errors import ConfigError
from fsclone.rules import EXCLUDE, rule

# -- parsers of values: from config.py, the environment or a flag ------------------------------

def age(v: Any) -> int | None:
    return parse_age(v if isinstance(v, int) else str(v))


def count(least: int) -> Callable[[Any], int]:
    """A parser of whole numbers of at least ``least`` (bools are not numbers here)."""
    def parse(v: Any) -> int:
        if isinstance(v, bool) or (isinstance(v, float) and not v.is_integer()):
            raise ValueError("not a whole number")
        n = int(v)
        if n < least:
            raise ValueError(f"must be at least {least}")
        return n
    return parse


def seconds(v: Any) -> float:
    """A finite number of seconds above zero."""
    secs = float(v)
    if not math.isfinite(secs) or secs <= 0:
        raise ValueError("must be a finite number of seconds above 0")
    return secs


def seconds_or_none(v: Any) -> float:
    """A finite number of seconds, 0 or more (0: never)."""
    secs = float(v)
    if not math.isfinite(secs) or secs < 0:
        raise ValueError("must be a finite number of seconds, 0 or more")
    return secs


def root_pairs(v: Any) -> tuple[tuple[str, str], ...]:
    """(SRC, DST) prefix pairs: a list of pairs, or ``"SRC:DST,SRC:DST"`` (the environment's
    form). Each must be an absolute path."""
    items = [item.split(":") for item in v.split(",") if item] if isinstance(v, str) else v
    pairs = []
    for item in items:
        src, dst = (str(p) for p in item)
        if not (os.path.isabs(src) and os.path.isabs(dst)):
            raise ValueError(f"not a pair of absolute paths: {item!r}")
        pairs.append((os.path.normpath(src), os.path.normpath(dst)))
    return tuple(pairs)


def command(v: Any) -> tuple[str, ...]:
    """A command to run: a list of words, or a string split as a shell would (``LFS``)."""
    words = tuple(shlex.split(v)) if isinstance(v, str) else tuple(str(w) for w in v)
    if not words:
        raise ValueError("an empty command")
    return words


#: compiled (and cached by re) at their first use: only CHANGELOG_USERS is checked with them
_MDT = r"[A-Za-z0-9_]{1,8}-MDT[0-9a-fA-F]{4}"
_CHANGELOG_USER = r"cl[0-9]+(-[A-Za-z0-9_.]+)?"


def changelog_users(v: Any) -> tuple[tuple[str, str], ...]:
    """(MDT, changelog user) pairs: a mapping such as ``{"lustre-MDT0000": "cl1"}``, or
    ``"lustre-MDT0000=cl1,lustre-MDT0001=cl2"`` (the environment's form)."""
    items = ([item.split("=", 1) for item in v.split(",") if item] if isinstance(v, str)
             else list(dict(v).items()))
    pairs = []
    for item in items:
        mdt, user = (str(p) for p in item)
        if not re.fullmatch(_MDT, mdt):
            raise ValueError(f"not an MDT name (FSNAME-MDTxxxx): {mdt!r}")
        if not re.fullmatch(_CHANGELOG_USER, user):
            raise ValueError(f"not a changelog user (clN or clN-NAME): {user!r}")
        pairs.append((mdt, user))
    return tuple(sorted(dict(pairs).items()))


def excludes(v: Any) -> tuple[str, ...]:
    """The site's EXCLUDES: patterns to exclude, a list or ``"A,B"`` (the environment's form),
    as rules."""
    patterns = v.split(",") if isinstance(v, str) else [str(x) for x in v]
    return tuple(r for r in (rule(p, EXCLUDE) for p in patterns) if r)


def one_of(choices: tuple[str, ...]) -> Callable[[Any], str]:
    """A parser of one of ``choices`` (LAYOUT, RELEASED)."""
    def parse(v: Any) -> str:
        if str(v) not in choices:
            raise ValueError(f"not one of {', '.join(choices)}")
        return str(v)
    return parse


def pool_name(v: Any) -> str:
    """A Lustre pool name: 1 to 15 bytes (LOV_MAXPOOLNAME), no blank, comma or colon (the
    environment's separators)."""
    name = str(v)
    size = len(name.encode("utf-8", "surrogateescape"))
    if not 0 < size <= 15 or any(c.isspace() or c in ",:\0" for c in name):
        raise ValueError(f"{name!r} is no Lustre pool name (1-15 bytes, no blank, ',' or ':')")
    return name


def pool_map(v: Any) -> tuple[tuple[str, str], ...]:
    """POOL_MAP: source pool → target pool, a dict or ``"old:new,old2:new2"`` (the
    environment's form); kept as sorted pairs, so the spec holds no mutable value."""
    if isinstance(v, str):
        items = [item.split(":") for item in v.split(",") if item]
        if any(len(item) != 2 for item in items):
            raise ValueError("expected old:new pairs, separated by commas")
        pairs = [(a, b) for a, b in items]
    elif isinstance(v, Mapping):
        pairs = list(v.items())
    else:
        raise ValueError("expected a dict {\"old\": \"new\"}")
    return tuple(sorted((pool_name(a), pool_name(b)) for a, b in pairs))


def pool_names(v: Any) -> tuple[str, ...]:
    """TARGET_POOLS: the target's pools, a list or ``"a,b"`` (the environment's form)."""
    names = v.split(",") if isinstance(v, str) else v
    if not isinstance(names, (list, tuple, set, frozenset)):
        raise ValueError("expected a list of pool names")
    return tuple(sorted({pool_name(n) for n in names if n != ""}))


def parse_address(value: str, default_port: int) -> tuple[str, int]:
    """``host``, ``host:port`` or ``[v6addr]:port`` (a service's address: MEMCACHED, GRAPHITE)."""
    host, sep, port = value.rpartition(":")
    if not sep or "]" in port or (host.count(":") and not host.startswith("[")):
        host, port = value, str(default_port)
    host = host.strip("[]")
    try:
        number = int(port)
    except ValueError:
        raise ConfigError(f"bad port in address {value!r}") from None
    if not host or not 0 < number < 65536:
        raise ConfigError(f"bad address {value!r}: expected host:port")
    return host, number


def address(v: Any) -> str:
    """A service's address, checked as the settings are read; kept as written (each sink
    knows its default port)."""
    parse_address(str(v), 1)
    return str(v)


#: the suffixes of a rate: bytes count in powers of 1024 (as rsync's --bwlimit), files in
#: powers of 1000
BINARY = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
DECIMAL = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}


def rate(units: Mapping[str, int]) -> Callable[[Any], float]:
    """A parser of a rate above zero, with an optional suffix (``100M``, ``10k``, ``2.5g``)."""
    def parse(v: Any) -> float:
        text = str(v).strip().lower()
        unit = text[-1:] if text[-1:].isalpha() else ""
        if unit not in units:
            raise ValueError(f"{v!r}: the suffixes are k, M, G, T")
        rate = float(text[:len(text) - len(unit)]) * units[unit]
        if not math.isfinite(rate) or rate <= 0:
            raise ValueError(f"{v!r} is not a rate above 0")
        return rate
    return parse


class Rate(click.ParamType):
    """A flag's rate (see :func:`rate`)."""

    name = "rate"

    def __init__(self, units: Mapping[str, int]) -> None:
        self.parse = rate(units)

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> float:
        try:
            return self.parse(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class Seconds(click.ParamType):
    """A finite, non-negative number of seconds: click's FloatRange lets nan and inf through
    (every comparison with nan is false)."""

    name = "secs"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> float:
        try:
            secs = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not math.isfinite(secs) or secs < 0:
            self.fail(f"{value!r} is not a finite, non-negative number of seconds", param, ctx)
        return secs


class Address(click.ParamType):
    """``HOST[:PORT]`` or ``[V6ADDR]:PORT``: a bad one is a usage error, before anything runs."""

    name = "address"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> str:
        try:
            return address(value)
        except ConfigError as exc:
            self.fail(str(exc), param, ctx)


# -- how values of the request compare and spell -----------------------------------------------

def no_age(age: int | None) -> int | None:
    """An age of 0 is no age."""
    return age or None


def in_seconds(age: int) -> str:
    return f"{age}s"


def to_ns(secs: float) -> int:
    return int(secs * 1e9)


def ns_as_seconds(ns: int) -> str:
    return f"{ns / 1e9:g}"


def list_digest(kept: str) -> str:
    """A ``--files-from`` list compares by its content: the pass keeps ``SHA256:PATH``
    (fsclone.engine.listed.identity), the Config the path alone."""
    digest, colon, _ = kept.partition(":")
    return digest if colon else kept


def list_path(kept: str) -> str:
    return kept.partition(":")[2] or kept


def auto_is_unset(kind: str) -> str | None:
    """``--transport auto`` (its default) leaves the choice to TRANSPORT, or to the rules."""
    return None if kind == "auto" else kind


