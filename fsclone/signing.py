"""Signatures that a broker account cannot forge: HMAC-SHA256 with a secret that the
coordinator and its workers hold and the broker never carries.

- **Planned chunks.** The chunks that remove or publish target entries (:data:`SIGNED_OPS`)
  run only as the coordinator issued them: it signs each one as it submits it (an ``unlink``
  from the plan it recorded and guarded, a ``prune`` or ``rmdir`` handed on by the removal it
  started, a ``finalize`` released by its barrier, the ``cleanup`` it seeds), and a worker runs
  none whose signature does not verify for its pass. The signature covers the pass id, the
  chunk's id, op, path, names, group and args: a chunk of one pass, or with one field changed,
  is refused.
- **Broker messages** (amqp only): announcements from the coordinator and result messages
  from the workers carry a signature of their body, so that a broker account can neither
  start a pass nor pass off a result as a worker's.

The key: a random one per pass for the local and mpi transports (their workers are the
coordinator's own processes), and the site's ``SIGNING_KEY_FILE`` for amqp, on every node.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import replace

from fsclone.chunk import Chunk
from fsclone.errors import ConfigError, MessageError
from fsclone.private import read_private
from fsclone.schema import PLAN

#: ops whose chunks only the coordinator may issue
SIGNED_OPS = frozenset({"unlink", "prune", "rmdir", "finalize", "cleanup"})
#: which ops' results may hand on a signed op's chunk (as a child or a barrier's ``then``),
#: for the coordinator to sign; ``unlink`` and ``cleanup`` come from its own plan only
ISSUERS = {"prune": frozenset({"unlink", "prune"}), "rmdir": frozenset({"prune"}),
           "finalize": frozenset({"copy", "sync"})}
#: the fewest bytes a key file may hold
MIN_KEY = 32


def may_issue(parent_op: str, op: str) -> bool:
    """Whether a result of a ``parent_op`` chunk may hand on a chunk of ``op``."""
    return op not in SIGNED_OPS or parent_op in ISSUERS.get(op, ())


def new_key() -> bytes:
    return secrets.token_bytes(MIN_KEY)


def read_key(path: str) -> bytes:
    """The secret in ``path``, refused unless only its owner can read or write it."""
    key = read_private(path, "signing key file", "make one, the same on every node: `head -c "
                       f"48 /dev/urandom | base64 > {path}; chmod 600 {path}`").strip()
    if len(key) < MIN_KEY:
        raise ConfigError(f"signing key file {path} holds fewer than {MIN_KEY} bytes")
    return key


class Signer:
    """Signs and checks with one key."""

    def __init__(self, key: bytes) -> None:
        if not key:
            raise ValueError("a Signer needs a key")
        self.key = key

    def mac(self, purpose: str, body: bytes) -> str:
        return hmac.new(self.key, purpose.encode() + b"\0" + body, hashlib.sha256).hexdigest()

    def verify(self, purpose: str, body: bytes, mac: object) -> bool:
        return isinstance(mac, str) and hmac.compare_digest(self.mac(purpose, body), mac)

    def _of_chunk(self, pass_id: str, chunk: Chunk) -> str:
        args = {k: v for k, v in chunk.args.items() if k != PLAN}
        fields = [pass_id, chunk.id, chunk.op, chunk.path,
                  list(chunk.names) if chunk.names is not None else None, chunk.group, args]
        return self.mac("chunk", json.dumps(fields, sort_keys=True, ensure_ascii=True).encode())

    def sign(self, pass_id: str, chunk: Chunk) -> Chunk:
        """``chunk`` with the signature of pass ``pass_id`` if its op needs one."""
        if chunk.op not in SIGNED_OPS:
            return chunk
        return replace(chunk, args={**chunk.args, PLAN: self._of_chunk(pass_id, chunk)})

    def check(self, pass_id: str, chunk: Chunk) -> None:
        """Raise MessageError unless ``chunk`` needs no signature or carries pass
        ``pass_id``'s."""
        if chunk.op in SIGNED_OPS and not hmac.compare_digest(
                str(chunk.args.get(PLAN, "")), self._of_chunk(pass_id, chunk)):
            raise MessageError(f"a {chunk.op} chunk without the coordinator's signature for "
                               f"pass {pass_id}: not issued by its plan")
