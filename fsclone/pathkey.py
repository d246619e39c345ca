"""Short, stable file and queue names derived from a path (lock files, tree records, broker
queues), the same on every host."""

from __future__ import annotations

import os

import xxhash


def path_key(path: str, length: int = 20) -> str:
    """Hex digest of ``path``, up to 32 characters. xxh3-128 rather than hashlib's sha256:
    xxhash is loaded anyway, and hashlib would load OpenSSL at every start (~10 ms)."""
    return xxhash.xxh3_128_hexdigest(os.fsencode(path))[:length]
