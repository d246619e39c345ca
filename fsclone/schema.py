"""What a chunk may say, op by op: every field that reaches the filesystem has a type and a
range, checked where a message becomes a :class:`~fsclone.chunk.Chunk`.

Chunks cross the broker, where anyone holding its credentials can publish; a worker runs as
root. So a chunk is refused (``MessageError``: dead-lettered and listed, never run) unless its
op is known, its path is a safe relative path, its names are single entries, and its ``args``
hold exactly the keys its op takes, each of the right type: whole numbers not below zero (times
may be), byte ranges inside the file, booleans that are booleans, and a temp name that is one
of fsclone's own (never a path). Which pass a temp name belongs to, and whether a chunk that
removes or publishes entries carries the coordinator's signature, are checked by the worker
against its pass (:meth:`fsclone.engine.worker.ChunkRunner.admit`).
"""

from __future__ import annotations

import os
import re
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fsclone.errors import MessageError

TMP_PREFIX = ".fsclone-tmp."

#: what fsclone's own temp names look like: prefix, pass id, crc32 of the final name, a tag
#: unique to one run of a chunk. The pass id makes a user's ``.fsclone-tmp.x`` unmistakable
#: for ours.
_TEMP = re.compile(r"\.fsclone-tmp\.(\d{8}-\d{6}-[a-z]+-[0-9a-f]{6})\.([0-9a-f]{8})\.[0-9a-f]{12}")


def validate_relpath(path: str) -> str:
    """Return ``path`` if it is a safe relative path below a pass root, else raise."""
    if "\0" in path:
        raise MessageError("path holds a NUL byte")
    if path == "":
        return path
    if path.startswith("/"):
        raise MessageError(f"absolute path in message: {path!r}")
    for part in path.split("/"):
        if part in ("", ".", ".."):
            raise MessageError(f"unsafe path component in message: {path!r}")
    return path


def validate_name(name: str) -> str:
    """Return ``name`` if it is a single directory entry name, else raise."""
    if name in ("", ".", "..") or "/" in name or "\0" in name:
        raise MessageError(f"unsafe entry name in message: {name!r}")
    return name


def temp_name(pass_id: str, name: str, tag: str) -> str:
    """A temp name in the target directory: our prefix, the pass id, a hash of the final name
    (so a chunk naming a temp can be checked against its names), and a tag unique to this
    run."""
    return f"{TMP_PREFIX}{pass_id}.{_crc(name)}.{tag}"


def _crc(name: str) -> str:
    return f"{zlib.crc32(os.fsencode(name)):08x}"


def temp_pass(name: str) -> str | None:
    """The pass id in one of fsclone's temp names, None for any other name."""
    match = _TEMP.fullmatch(name)
    return match.group(1) if match else None


#: the hard-link staging directory of a pass, at the target root: this prefix and the pass id
LINKS_PREFIX = ".fsclone-links."
_STAGING = re.compile(r"\.fsclone-links\.(\d{8}-\d{6}-[a-z]+-[0-9a-f]{6})")


def staging_pass(name: str) -> str | None:
    """The pass id in the name of a hard-link staging directory (at the target root), None
    for any other name."""
    match = _STAGING.fullmatch(name)
    return match.group(1) if match else None


def is_temp_for(tmp: str, pass_id: str, names: set[str]) -> bool:
    """Whether ``tmp`` is a temp name of pass ``pass_id``, for one of ``names``."""
    match = _TEMP.fullmatch(tmp)
    if match is None or match.group(1) != pass_id:
        return False
    return any(_crc(n) == match.group(2) for n in names)


# -- field types ------------------------------------------------------------------------------
Check = Callable[[Any], bool]


def _count(v: Any) -> bool:
    return type(v) is int and v >= 0


def _time(v: Any) -> bool:
    return type(v) is int  # a time before 1970 is negative


def _flag(v: Any) -> bool:
    return type(v) is bool


def _temp(v: Any) -> bool:
    return isinstance(v, str) and temp_pass(v) is not None


def _token(v: Any) -> bool:
    return isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v) is not None


#: a large file's identity, taken before it was split, and its temp (range, finalize)
_FILE = {"tmp": _temp, "ino": _count, "size": _count, "mtime_ns": _time, "ctime_ns": _time,
         "sparse": _flag}
_RANGE = {"start": _count, "end": _count}
#: the coordinator's signature of a chunk that removes or publishes entries (fsclone.signing):
#: it signs such a chunk when it issues it, so one a worker hands on (in a result) has none yet
PLAN = "plan"
_PLAN = {PLAN: _token}

#: how many names a chunk may carry: none, any (a slice; None or a tuple), exactly one, one or
#: more
NONE, ANY, ONE, SOME = "none", "any", "one", "some"


@dataclass(frozen=True)
class OpSchema:
    """The shape of one op's chunks: which ``args`` it must and may carry, its names."""

    required: Mapping[str, Check]
    optional: Mapping[str, Check]
    names: str
    at_root: bool = False  # only ever about the roots themselves (path "")


_NEW = {"new": _flag}  # the directory was made by this pass
#: a chunk of ``--files-from`` (fsclone.engine.listed): its directory made if missing, and
#: nothing walked
_LISTED = {"listed": _flag}

#: the most slices a dirty directory's chunk hands its listing out in (its ``spread``)
MAX_SPREAD = 4096


def _spread(v: Any) -> bool:
    return type(v) is int and 2 <= v <= MAX_SPREAD


#: a dirty directory of change-driven sync (fsclone.engine.changes): its subdirectories are
#: not walked, and its listing is handed out in ``spread`` slices; a ``moved`` slice's files
#: were just moved to its names (fsclone.ops.moves), their metadata compared in full
_SHALLOW = {"shallow": _flag, "spread": _spread, "moved": _flag}

SCHEMAS: dict[str, OpSchema] = {
    "copy": OpSchema({}, {**_NEW, **_LISTED}, ANY),
    "sync": OpSchema({}, {**_NEW, **_SHALLOW}, ANY),
    "dirmeta": OpSchema({}, _NEW, NONE),
    "range": OpSchema({**_FILE, **_RANGE}, {}, ONE),
    "finalize": OpSchema(_FILE, {"members_failed": _flag, **_PLAN}, ONE),
    "cleanup": OpSchema({}, _PLAN, NONE, at_root=True),
    "delete": OpSchema({}, {}, NONE),
    "unlink": OpSchema({}, _PLAN, SOME),
    "count": OpSchema({}, {}, NONE),
    "prune": OpSchema({}, _PLAN, ANY),
    "rmdir": OpSchema({}, _PLAN, ANY),
    "mtime": OpSchema({}, {}, NONE),
    "scan": OpSchema({}, {}, ANY),
    "verify": OpSchema({}, {}, ANY),
    "verify_range": OpSchema({"size": _count, "mtime_ns": _time, **_RANGE}, {}, ONE),
    # never run: a barrier's placeholder ``then`` in a result (see the coordinator)
    "barrier": OpSchema({}, {}, NONE),
}


def check_chunk(op: str, path: str, names: tuple[str, ...] | None,
                args: Mapping[str, Any]) -> None:
    """Raise MessageError unless a chunk with these fields is one fsclone could have made.
    ``path`` and ``names`` are validated already (see Chunk.from_wire)."""
    schema = SCHEMAS.get(op)
    if schema is None:
        raise MessageError(f"unknown op {op!r}")
    if schema.at_root and path:
        raise MessageError(f"a {op} chunk is about the roots, not {path!r}")
    _check_names(op, schema.names, names)
    unknown = set(args) - set(schema.required) - set(schema.optional)
    if unknown:
        raise MessageError(f"a {op} chunk takes no {', '.join(sorted(map(repr, unknown)))}")
    missing = set(schema.required) - set(args)
    if missing:
        raise MessageError(f"a {op} chunk needs {', '.join(sorted(map(repr, missing)))}")
    for key, value in args.items():
        check = schema.required.get(key) or schema.optional[key]
        if not check(value):
            raise MessageError(f"bad {key} in a {op} chunk: {value!r}")
    if "start" in args:
        end = args["end"]
        if not args["start"] < end <= args["size"]:
            raise MessageError(f"bad byte range in a {op} chunk: [{args['start']}, {end}) of "
                               f"{args['size']}")


def _check_names(op: str, rule: str, names: tuple[str, ...] | None) -> None:
    if rule == ANY:
        return
    if rule == NONE:
        ok = names is None
    elif rule == ONE:
        ok = names is not None and len(names) == 1
    else:
        ok = bool(names)
    if not ok:
        raise MessageError(f"a {op} chunk cannot carry names {names!r}")
