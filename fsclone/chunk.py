"""Chunks (units of work) and results, and their safe wire encoding.

Names are ``str`` decoded with ``surrogateescape`` (as ``os`` does), so any byte string a POSIX
name can hold survives; the JSON encoding escapes them as ASCII. Every decoded path is validated:
relative, no ``..`` or ``.`` component, no empty component, no NUL; and every chunk's op, names
and args are checked against its op's schema (fsclone.schema), on whichever side decodes it.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

from fsclone.errors import MessageError
from fsclone.schema import check_chunk, validate_name, validate_relpath


def join(parent: str, name: str) -> str:
    """Join a relative directory and an entry name ('' is the root)."""
    return f"{parent}/{name}" if parent else name


def new_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Chunk:
    """One unit of work: an op applied to a directory, a slice of its names, or a file range.

    ``group`` names the barrier this chunk counts toward (see :class:`Group`); ``attempt`` is 0
    on the first run and grows with each run that failed or died (a resume of the pass is not a
    run: the chunk keeps its attempt); ``redo`` says an earlier run may have left temp files,
    for the op to remove: set by a retry, a redelivery and a resume alike.
    ``args`` carries op-specific small values (temp name, byte range, source identity).
    """

    op: str
    path: str
    names: tuple[str, ...] | None = None
    args: dict[str, Any] = field(default_factory=dict)
    group: str | None = None
    attempt: int = 0
    id: str = field(default_factory=new_id)
    redo: bool = False

    @property
    def subject(self) -> str:
        """Where a failure of the whole chunk is listed: the one entry of a chunk about one
        name (a large file's range or finalize), else its directory ("" is the root)."""
        return join(self.path, self.names[0]) if self.names and len(self.names) == 1 \
            else self.path

    def retry(self) -> Chunk:
        """The next try after a run that failed."""
        return replace(self, attempt=self.attempt + 1, redo=True)

    def redone(self) -> Chunk:
        """The same try again, after a run that may have left temp files (a resumed pass)."""
        return replace(self, redo=True)

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "op": self.op,
            "path": self.path,
            "names": list(self.names) if self.names is not None else None,
            "args": self.args,
            "group": self.group,
            "attempt": self.attempt,
            "redo": self.redo,
        }

    @classmethod
    def from_wire(cls, data: Any) -> Chunk:
        try:
            names = data["names"]
            group = data.get("group")
            chunk = cls(
                op=str(data["op"]),
                path=validate_relpath(str(data["path"])),
                names=tuple(validate_name(str(n)) for n in names) if names is not None else None,
                args=dict(data.get("args") or {}),
                group=None if group is None else str(group),
                attempt=int(data.get("attempt", 0)),
                id=str(data["id"]),
                redo=bool(data.get("redo", False)),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise MessageError(f"malformed chunk: {exc}") from exc
        check_chunk(chunk.op, chunk.path, chunk.names, chunk.args)
        return chunk


@dataclass(frozen=True)
class Group:
    """A barrier: when ``size`` chunks carrying this group id have finished, ``then`` is issued."""

    id: str
    size: int
    then: Chunk

    def to_wire(self) -> dict[str, Any]:
        return {"id": self.id, "size": self.size, "then": self.then.to_wire()}

    @classmethod
    def from_wire(cls, data: Any) -> Group:
        try:
            return cls(id=str(data["id"]), size=int(data["size"]),
                       then=Chunk.from_wire(data["then"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise MessageError(f"malformed group: {exc}") from exc


@dataclass(frozen=True)
class ItemError:
    """A per-item failure: listed with path and errno, never stops the rest of a chunk.

    ``step`` and ``side`` say where in the item's work it failed (see fsclone.fs.steps): ""
    when nobody knows (a chunk that failed as a whole, a record written before they existed).
    """

    path: str
    op: str
    errno: int
    message: str
    step: str = ""
    side: str = ""

    def to_wire(self) -> list[Any]:
        return [self.path, self.op, self.errno, self.message, self.step, self.side]

    @classmethod
    def from_wire(cls, data: Any) -> ItemError:
        path, op, errno, message, step, side = data
        return cls(str(path), str(op), int(errno), str(message), str(step), str(side))


#: one manifest row of the verify pass: relative path, size, mtime_ns, xxh3-128 hex of bytes
#: [start, end) (the whole file, or one range of a large file), start, end
ManifestRow = tuple[str, int, int, str, int, int]


@dataclass
class Result:
    """What a worker reports for one chunk.

    ``children`` are new chunks to run; ``groups`` are barriers some children belong to;
    ``deletions`` are planned removals (directory, names, entries counted below them);
    ``actions`` are dry-run or verbose lines; ``skipped`` the source directories the chunk left
    on purpose (another filesystem, ``--one-file-system``), kept in the pass record;
    ``released`` the HSM-released files it left unread (``--released skip``), listed there too;
    ``manifest`` are the verify pass's rows, written by the coordinator as results arrive;
    ``failed`` is set when the chunk as a whole failed and should be retried.
    """

    chunk: Chunk
    counters: dict[str, int] = field(default_factory=dict)
    children: list[Chunk] = field(default_factory=list)
    groups: list[Group] = field(default_factory=list)
    errors: list[ItemError] = field(default_factory=list)
    deletions: list[tuple[str, tuple[str, ...], int]] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    released: list[str] = field(default_factory=list)
    manifest: list[ManifestRow] = field(default_factory=list)
    failed: str | None = None
    worker: str = ""

    def to_wire(self) -> dict[str, Any]:
        return {
            "chunk": self.chunk.to_wire(),
            "counters": self.counters,
            "children": [c.to_wire() for c in self.children],
            "groups": [g.to_wire() for g in self.groups],
            "errors": [e.to_wire() for e in self.errors],
            "deletions": [[d, list(n), c] for d, n, c in self.deletions],
            "actions": self.actions,
            "skipped": self.skipped,
            "released": self.released,
            "manifest": [list(row) for row in self.manifest],
            "failed": self.failed,
            "worker": self.worker,
        }

    @classmethod
    def from_wire(cls, data: Any) -> Result:
        try:
            return cls(
                chunk=Chunk.from_wire(data["chunk"]),
                counters={str(k): int(v) for k, v in data["counters"].items()},
                children=[Chunk.from_wire(c) for c in data["children"]],
                groups=[Group.from_wire(g) for g in data["groups"]],
                errors=[ItemError.from_wire(e) for e in data["errors"]],
                deletions=[
                    (
                        validate_relpath(str(d)),
                        tuple(validate_name(str(x)) for x in n),
                        int(c),
                    )
                    for d, n, c in data["deletions"]
                ],
                actions=[str(a) for a in data["actions"]],
                skipped=[validate_relpath(str(p)) for p in data.get("skipped", ())],
                released=[validate_relpath(str(p)) for p in data.get("released", ())],
                manifest=[_manifest_row(row) for row in data.get("manifest", ())],
                failed=data.get("failed"),
                worker=str(data.get("worker", "")),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise MessageError(f"malformed result: {exc}") from exc


def _manifest_row(data: Any) -> ManifestRow:
    path, size, mtime_ns, digest, start, end = data
    return (validate_relpath(str(path)), int(size), int(mtime_ns), str(digest), int(start),
            int(end))


def dumps(obj: Chunk | Result) -> bytes:
    """Encode for a byte transport (AMQP, MPI): ASCII JSON, surrogates escaped."""
    return json.dumps(obj.to_wire(), ensure_ascii=True, separators=(",", ":")).encode("ascii")


def loads_chunk(body: bytes) -> Chunk:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MessageError(f"chunk is not JSON: {exc}") from exc
    return Chunk.from_wire(data)


def loads_result(body: bytes) -> Result:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MessageError(f"result is not JSON: {exc}") from exc
    return Result.from_wire(data)
