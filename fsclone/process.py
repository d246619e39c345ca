"""Facts about processes of this host, and the signals that stop a pass."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator

#: what stops a pass: Ctrl-C, and a walltime's end or scancel
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (one of another user counts; 0 and
    negative pids name no single process)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def stop_signals_ignored() -> Iterator[None]:
    """SIGINT and SIGTERM ignored for a while: a pass stopping on one writes how it stopped,
    and a second (Ctrl-C pressed twice, scancel sent twice) raised in the middle would leave
    its record saying "running". Only the main thread sets handlers; elsewhere a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = [signal.signal(signum, signal.SIG_IGN) for signum in STOP_SIGNALS]
    try:
        yield
    finally:
        for signum, handler in zip(STOP_SIGNALS, before, strict=True):
            signal.signal(signum, handler)
