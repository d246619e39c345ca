"""Running the real ``fsclone`` command from tests, as a user would."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

PathLike = str | bytes | os.PathLike[str] | os.PathLike[bytes]


def fsclone_env(state: Path, **settings: object) -> dict[str, str]:
    """The environment for a run: its own state dir, settings as FSCLONE_* variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FSCLONE_")}
    env["FSCLONE_STATE_DIR"] = str(state)
    env.update({f"FSCLONE_{k.upper()}": str(v) for k, v in settings.items()})
    return env


def fsclone(*args: PathLike, state: Path, timeout: float = 300,
            **settings: object) -> subprocess.CompletedProcess[bytes]:
    cmd: list[str | bytes] = [sys.executable, "-m", "fsclone", *[os.fsencode(a) for a in args]]
    return subprocess.run(cmd, env=fsclone_env(state, **settings), capture_output=True,
                          timeout=timeout, check=False)


#: what a local pass imports, loaded before :func:`fsclone_as` drops its privileges
_LOADED_FIRST = ("fsclone.cli", "fsclone.cli.passes", "fsclone.engine.launch",
                 "fsclone.transport.local", "fsclone.ops.registry",
                 "multiprocessing.popen_fork", "multiprocessing.connection")


#: the unprivileged user the tests race and run passes as
NOBODY, NOGROUP = 65534, 65534


def as_user(uid: int, gid: int, action: Callable[[], None]) -> int:
    """Start ``action`` in a fork of this process as another user (what a hostile user can
    do, or a user's own pass); returns its pid, for :func:`wait_ok` or ``os.waitpid``. The
    fork exits 0 when ``action`` returns, with a SystemExit's code, or 99 after a traceback."""
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            action()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    return pid


def wait_ok(pid: int) -> None:
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the user's action failed"


def fsclone_as(uid: int, gid: int, *args: PathLike, state: Path,
               **settings: object) -> subprocess.CompletedProcess[bytes]:
    """Run the ``fsclone`` command as an unprivileged user. The interpreter may live where
    that user cannot read (a root-only home), so the command runs in a fork of the test's
    own process (:func:`as_user`), with the CLI loaded beforehand."""
    for module in _LOADED_FIRST:  # before the user loses the right to read them
        importlib.import_module(module)

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        def command() -> None:
            os.dup2(out.fileno(), 1)
            os.dup2(err.fileno(), 2)
            sys.stdout, sys.stderr = os.fdopen(1, "w"), os.fdopen(2, "w")
            os.environ.clear()
            os.environ.update(fsclone_env(state, **settings))
            sys.argv = ["fsclone", *map(os.fsdecode, args)]
            sys.modules["fsclone.cli"].main()

        _, status = os.waitpid(as_user(uid, gid, command), 0)
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(args, os.waitstatus_to_exitcode(status),
                                           out.read(), err.read())


def fsclone_json(*args: PathLike, state: Path, **settings: Any) -> tuple[int, dict[str, Any]]:
    """Run a pass with --json; returns the exit code and the summary (``settings`` may hold
    ``timeout``, passed on to `fsclone`)."""
    proc = fsclone(*args, "--json", state=state, **settings)
    assert proc.stdout, proc.stderr.decode(errors="replace")
    return proc.returncode, json.loads(proc.stdout.splitlines()[-1])


#: every command a test started in the background, so that none outlives its test
SPAWNED: list[subprocess.Popen[bytes]] = []


def spawn(*args: PathLike, state: Path, **settings: object) -> subprocess.Popen[bytes]:
    cmd: list[str | bytes] = [sys.executable, "-m", "fsclone", *[os.fsencode(a) for a in args]]
    proc = subprocess.Popen(cmd, env=fsclone_env(state, **settings), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    SPAWNED.append(proc)
    return proc


def reap_spawned() -> None:
    """Kill what a test left running: a test that failed or timed out while it waited on a
    pass would otherwise leave it using the CPU that later tests and timings need."""
    while SPAWNED:
        proc = SPAWNED.pop()
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (a pass's workers)."""
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``. (Open MPI puts ranks in process groups of their own, and
    they run on when mpirun alone is SIGKILLed; mpirun takes about a second to act on SIGTERM.)
    """
    try:
        found = children(pid)
    except FileNotFoundError:
        return []
    return [p for child in found for p in (child, *descendants(child))]
