"""What travels through the broker, and under which names. Plain Python: no pika here.

Every message body is JSON built from :mod:`fsclone.chunk`: a work message is a list of chunks
(a batch, see :func:`batches`) and a result message the list of their results, in order.
Announcements on the ``fsclone.control`` fanout exchange tell idle workers which passes are
active and give them each pass's spec. Announcements and result messages are signed with the
site's key (fsclone.signing): a broker account can publish, but neither start a pass nor pass
off a result as a worker's.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fsclone.chunk import Chunk, Result, dumps
from fsclone.errors import MessageError
from fsclone.pathkey import path_key
from fsclone.signing import Signer
from fsclone.spec import PassSpec

CONTROL_EXCHANGE = "fsclone.control"
#: seconds between a coordinator's announcements, and how long a worker keeps serving a pass
#: it has not heard of: no worker works for a coordinator that is gone
ANNOUNCE_INTERVAL = 2.0
LEASE = 4 * ANNOUNCE_INTERVAL
ACTIVE, ENDED = "active", "ended"
#: the most chunks one work message carries
MAX_BATCH = 32
#: header of a message a worker moved to the dead-letter queue itself: why
REASON_HEADER = "fsclone-reason"
#: header of a result message: its signature, by a worker that holds the key
SIGNATURE_HEADER = "fsclone-signature"


@dataclass(frozen=True)
class Queues:
    """The durable queues of one pass."""

    chunks: str
    results: str
    dead: str

    @classmethod
    def of(cls, pass_id: str) -> Queues:
        base = f"fsclone.{pass_id}"
        return cls(f"{base}.chunks", f"{base}.results", f"{base}.dead")


def guard_queue(dst: str) -> str:
    """The exclusive queue a coordinator holds while it serves a target: a second coordinator
    for the same target, on any host using this broker, cannot declare it."""
    return "fsclone.target." + path_key(dst, 24)


def _join(items: Sequence[Chunk] | Sequence[Result]) -> bytes:
    return b"[" + b",".join(dumps(item) for item in items) + b"]"


def encode_chunks(chunks: Sequence[Chunk]) -> bytes:
    return _join(chunks)


def encode_results(results: Sequence[Result]) -> bytes:
    return _join(results)


def _list(body: bytes, what: str) -> list[Any]:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MessageError(f"{what} message is not JSON: {exc}") from exc
    if not isinstance(data, list) or not data:
        raise MessageError(f"{what} message is not a non-empty JSON list")
    return data


def decode_chunks(body: bytes) -> list[Chunk]:
    return [Chunk.from_wire(item) for item in _list(body, "work")]


def decode_results(body: bytes) -> list[Result]:
    return [Result.from_wire(item) for item in _list(body, "result")]


def _announced(event: Any, spec: Any) -> bytes:
    """What an announcement's signature covers."""
    return json.dumps([event, spec], sort_keys=True, ensure_ascii=True).encode()


def encode_announcement(event: str, spec: PassSpec, signer: Signer) -> bytes:
    wired = spec.to_wire()
    return json.dumps({"event": event, "spec": wired,
                       "signature": signer.mac("announce", _announced(event, wired))}).encode()


def decode_announcement(body: bytes, signer: Signer) -> tuple[str, PassSpec]:
    """The event and spec of an announcement whose signature is ours; MessageError for any
    other (a broker account cannot start a pass)."""
    try:
        data = json.loads(body)
        event = data["event"]
        signed = signer.verify("announce", _announced(event, data["spec"]),
                               data.get("signature"))
        spec = PassSpec.from_wire(data["spec"])
    except (ValueError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise MessageError(f"malformed announcement: {exc}") from exc
    if not signed:
        raise MessageError(f"announcement of pass {spec.id} ({spec.op} {spec.src!r} -> "
                           f"{spec.dst!r}) is not signed with this node's SIGNING_KEY_FILE")
    if event not in (ACTIVE, ENDED):
        raise MessageError(f"unknown announcement {event!r}")
    return event, spec


def results_purpose(pass_id: str) -> str:
    """What a result message of pass ``pass_id`` is signed as (fsclone.signing.Signer)."""
    return f"result {pass_id}"


def batches(chunks: Sequence[Chunk], in_flight: int, consumers: int) -> list[Sequence[Chunk]]:
    """Pack chunks into work messages. Big batches spare the broker (one message and one result
    per batch instead of per directory); small ones keep every worker busy to the end. So a
    batch holds about a quarter of each consumer's share of all the work in flight, no more
    than an even share of these chunks, and at most :data:`MAX_BATCH`. (A dead-lettered batch
    is split up again: see the coordinator.)"""
    consumers = max(1, consumers)
    share = -(-len(chunks) // consumers)
    size = max(1, min(MAX_BATCH, share, (in_flight + len(chunks)) // (4 * consumers)))
    return [chunks[i:i + size] for i in range(0, len(chunks), size)]
