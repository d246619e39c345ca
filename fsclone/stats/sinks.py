"""The sink seam: where a pass's periodic snapshots go (memcached, Graphite).

A sink sends one snapshot synchronously and raises :class:`SinkError` when it cannot; the
:mod:`fsclone.stats.reporter` runs each sink on its own thread, so a sink that is down or slow
never stops or slows a pass.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from fsclone.errors import FscloneError
from fsclone.stats.snapshot import Snapshot


class SinkError(FscloneError):
    """A stats service could not be reached or refused the data (the pass goes on)."""

    @classmethod
    def of(cls, exc: Exception) -> SinkError:
        """Name the client library's exception in one line: a refused connection, a timeout."""
        return cls(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)


class Sink(ABC):
    #: what the log lines call it, e.g. "memcached 10.0.0.5:11211"
    name: str

    @abstractmethod
    def send(self, snapshot: Snapshot) -> None:
        """Deliver one snapshot, within the sink's own timeouts; raise SinkError on failure."""

    def close(self) -> None:
        """Release connections. Default: nothing to release."""
        return None


def safe_token(text: str, keep: str = "") -> str:
    """``text`` as one key or metric-path component: letters, digits, ``_``, ``-`` and the
    characters in ``keep``; anything else (dots in host names, spaces, control bytes) becomes
    ``_``."""
    out = "".join(ch if (ch.isascii() and ch.isalnum()) or ch in "_-" + keep else "_"
                  for ch in text)
    return out or "_"
