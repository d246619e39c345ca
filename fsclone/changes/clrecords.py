"""Lustre changelog records as ``lfs changelog MDT [STARTREC]`` prints them, parsed from bytes.

One record a line, as lustre/utils/lfs.c writes it::

    IDX NNTYPE HH:MM:SS.NS YYYY.MM.DD 0xFLAGS t=[FID] [j=JOBID] [ef=0xX] [u=UID:GID]
        [nid=NID] [m=rwx] [x=XATTR] [p=[PFID]] [NAME] [s=[SFID] sp=[SPFID] SNAME]

The type is its number and its name padded to five (``00MARK`` takes two spaces after it).
Names are a file's bytes, printed raw: any byte but NUL and ``/``, spaces and newlines
included. So a line that does not start a record continues the name of the one before it,
and a record whose names hold what reads as a field of its own (``" p=[FID]"``, ``" s=[FID]
sp=[FID] "``) cannot be told from one that has that field: :class:`AmbiguousRecord`, answered
like a gap (only a full sync is safe). A user can make the feed fall back to full syncs this
way, never make it miss a change.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from fsclone.errors import FscloneError

#: the record types by number (lustre_user.h, ``changelog_type2str``); a number not here is
#: still parsed, and its record treated as touching what its FIDs name
TYPES = ("MARK", "CREAT", "MKDIR", "HLINK", "SLINK", "MKNOD", "UNLNK", "RMDIR", "RENME",
         "RNMTO", "OPEN", "CLOSE", "LYOUT", "TRUNC", "SATTR", "XATTR", "HSM", "MTIME", "CTIME",
         "ATIME", "MIGRT", "FLRW", "RESYNC", "GXATR", "NOPEN")

_FID = rb"0x[0-9a-fA-F]+:0x[0-9a-fA-F]+:0x[0-9a-fA-F]+"
_HEADER = re.compile(
    rb"(?P<index>[0-9]+) (?P<num>[0-9]{2})(?P<type>[A-Z]+) +"
    rb"(?P<time>[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{1,9} [0-9]{4}\.[0-9]{2}\.[0-9]{2}) "
    rb"0x(?P<flags>[0-9a-fA-F]+) t=\[(?P<t>" + _FID + rb")\]")
#: what follows the header, every field optional, in lfs's order; names and job ids are
#: matched lazily, so the first reading that accounts for the whole line is taken
_REST = re.compile(
    rb"(?: j=(?P<j>.*?))?"
    rb"(?: ef=0x(?P<ef>[0-9a-fA-F]+))?"
    rb"(?: u=(?P<uid>[0-9]+):(?P<gid>[0-9]+))?"
    rb"(?: nid=(?P<nid>[^ \n]+))?"
    rb"(?: m=(?P<m>[rwx-]{3}))?"
    rb"(?: x=(?P<x>.*?))?"
    rb"(?: p=\[(?P<p>" + _FID + rb")\](?: (?P<name>.*?))?)?"  # a name comes with its parent
    rb"(?: s=\[(?P<s>" + _FID + rb")\] sp=\[(?P<sp>" + _FID + rb")\] (?P<sname>.*))?",
    re.DOTALL)
_PARENT_FIELD = re.compile(rb" p=\[" + _FID + rb"\]")
_RENAME_FIELD = re.compile(rb" s=\[" + _FID + rb"\] sp=\[" + _FID + rb"\] ")


class ChangelogParseError(FscloneError):
    """A line of ``lfs changelog`` output that is no record: what it said is unknown, so the
    feed answers it as a gap."""

    def __init__(self, line_number: int, line: bytes, why: str) -> None:
        super().__init__(f"changelog line {line_number}: {why}: {line[:200]!r}")
        self.line_number = line_number


class AmbiguousRecord(ChangelogParseError):
    """A record whose names hold text that reads as one of its fields."""


@dataclass(frozen=True)
class Record:
    """One changelog record. FIDs are ``0xSEQ:0xOID:0xVER`` without brackets; names bytes."""

    index: int
    type: str            # CREAT, RENME, ... (a number not in TYPES: "NN?")
    time: bytes          # as printed: HH:MM:SS.NS YYYY.MM.DD (UTC)
    flags: int
    target: str          # t=: the object the record is about (a rename: the overwritten one)
    jobid: bytes | None = None
    extra_flags: int | None = None
    uid_gid: tuple[int, int] | None = None
    nid: bytes | None = None
    open_mode: bytes | None = None   # m= (OPEN, CLOSE)
    xattr: bytes | None = None       # x= (XATTR, GXATR)
    parent: str | None = None        # p=
    name: bytes | None = None
    source: str | None = None        # s=: a rename's object
    source_parent: str | None = None  # sp=
    source_name: bytes | None = None


def _fid(value: bytes | None) -> str | None:
    return value.decode("ascii").lower() if value is not None else None


def parse_record(line: bytes, line_number: int = 1) -> Record:
    """One record from one line (its trailing newline removed)."""
    head = _HEADER.match(line)
    if head is None:
        raise ChangelogParseError(line_number, line, "not a changelog record")
    num = int(head["num"])
    kind = head["type"].decode("ascii")
    known = TYPES[num] if num < len(TYPES) else None
    if known is not None and known != kind:
        raise ChangelogParseError(line_number, line, f"type {num:02d} is {known}, not {kind}")
    tail = line[head.end():]
    if len(_PARENT_FIELD.findall(tail)) > 1 or len(_RENAME_FIELD.findall(tail)) > 1:
        raise AmbiguousRecord(line_number, line, "a name holds what reads as a field")
    rest = _REST.fullmatch(tail)
    if rest is None:  # a name must follow p= after a space: nothing else is left unmatched
        raise ChangelogParseError(line_number, line, "fields out of order or garbled")
    for name in (rest["name"], rest["sname"]):
        if name is not None and (b"/" in name or b"\0" in name or name in (b".", b"..")):
            raise ChangelogParseError(line_number, line, "a name no file can have")
    if rest["s"] is not None and kind not in ("RENME", "RNMTO", "MIGRT"):
        raise AmbiguousRecord(line_number, line, f"a {kind} record with a rename's fields")
    uid_gid = (int(rest["uid"]), int(rest["gid"])) if rest["uid"] is not None else None
    return Record(
        index=int(head["index"]), type=kind if known else f"{num:02d}?", time=head["time"],
        flags=int(head["flags"], 16), target=_fid(head["t"]) or "",
        jobid=rest["j"], extra_flags=int(rest["ef"], 16) if rest["ef"] is not None else None,
        uid_gid=uid_gid, nid=rest["nid"], open_mode=rest["m"], xattr=rest["x"],
        parent=_fid(rest["p"]), name=rest["name"] or None, source=_fid(rest["s"]),
        source_parent=_fid(rest["sp"]), source_name=rest["sname"])


def record_index(line: bytes) -> int | None:
    """The number of the record ``line`` starts, None when it starts none."""
    head = _HEADER.match(line)
    return int(head["index"]) if head is not None else None


def parse_lines(lines: Iterable[bytes]) -> Iterator[Record]:
    """The records of ``lfs changelog`` output, lines with or without their newline. A line
    that does not start a record continues the previous one's name (a newline in a name):
    a record that takes one must end in a name, and the first line must start a record."""
    pending: list[tuple[int, bytes]] = []
    for number, raw in enumerate(lines, 1):
        line = raw[:-1] if raw.endswith(b"\n") else raw
        if _HEADER.match(line) is None and pending:
            pending.append((number, line))
            continue
        if pending:
            yield _joined(pending)
        pending = [(number, line)]
    if pending:
        yield _joined(pending)


def _joined(lines: list[tuple[int, bytes]]) -> Record:
    """The record of a line and the lines its names continue on."""
    record = parse_record(b"\n".join(line for _, line in lines), lines[0][0])
    if len(lines) > 1 and b"\n" not in (record.name or b"") + (record.source_name or b""):
        raise ChangelogParseError(lines[1][0], lines[1][1], "not a changelog record")
    return record
