"""The contenders, and how one timed run of one of them is made and checked.

A contender is one entry in a table: fsclone variants in FSCLONE_VARIANTS, peers in PEERS.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import procmem

#: fsclone variants to race: name -> options after `pass copy`; {workers} is filled in.
#: A new variant (say an AMQP transport) is one more entry here and a name in --variants.
FSCLONE_VARIANTS: dict[str, list[str]] = {
    "fsclone": ["--workers", "{workers}", "-q"],
}

BENCH_ROOT_NAME = "fsclone-bench"


@dataclass(frozen=True)
class Tool:
    """One contender. `argv` builds the command for SRC -> DST; `fresh_dst` says whether DST
    must not exist yet (cp -a SRC DST) or is created empty first; `needs` is the binary whose
    absence means "not installed"; `incremental` tools also get the no-op re-run."""

    name: str
    label: str
    argv: Callable[[Path, Path], list[str]]
    needs: str
    fresh_dst: bool = False
    incremental: bool = True
    fsclone: bool = False

    def installed(self) -> bool:
        return self.fsclone or shutil.which(self.needs) is not None


def fsclone_tools(
    cmd: list[str], variants: list[str], workers: int, build: str = ""
) -> list[Tool]:
    """One Tool per requested fsclone variant, all launched through cmd (e.g. `fsclone`).
    A named ``build`` (one of several installs raced against each other) names its tools:
    the build's name for the plain variant, ``build:variant`` for the others."""
    tools = []
    for name in variants:
        opts = [o.format(workers=workers) for o in FSCLONE_VARIANTS[name]]
        tools.append(
            Tool(
                name=_tool_name(build, name),
                label=" ".join([*cmd, "pass", "copy", *opts]),
                argv=_fsclone_argv(cmd, opts),
                needs=cmd[0],
                fsclone=True,
            )
        )
    return tools


def _tool_name(build: str, variant: str) -> str:
    if not build:
        return variant
    return build if variant == "fsclone" else f"{build}:{variant}"


def _fsclone_argv(cmd: list[str], opts: list[str]) -> Callable[[Path, Path], list[str]]:
    return lambda src, dst: [*cmd, "pass", "copy", *opts, str(src), str(dst)]


def peers(workers: int) -> dict[str, Tool]:
    """The peer tools, configured for a faithful (-aHAX-equivalent) local copy."""
    mpirun = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", str(workers)]
    return {
        "rsync": Tool(
            "rsync", "rsync -aHAX", lambda s, d: ["rsync", "-aHAX", f"{s}/", f"{d}/"], needs="rsync"
        ),
        "cp": Tool(
            "cp",
            "cp -a",
            lambda s, d: ["cp", "-a", str(s), str(d)],
            needs="cp",
            fresh_dst=True,
            incremental=False,
        ),
        "dsync": Tool(
            "dsync",
            f"mpirun -np {workers} dsync",
            lambda s, d: [*mpirun, "dsync", str(s), str(d)],
            needs="dsync",
        ),
    }


@dataclass
class Run:
    """One timed run; `faithful` is None when it was not verified."""

    tool: str
    phase: str
    rep: int
    tree: str
    seconds: float
    rc: int
    error: str = ""
    faithful: bool | None = None
    diff: list[str] = field(default_factory=list)
    mem: dict[str, int] | None = None

    def ok(self) -> bool:
        return self.rc == 0 and self.faithful is not False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def under_root(path: Path, root: Path) -> Path:
    """Refuse any path that is not strictly inside a bench root: rm -rf runs on these."""
    path, root = path.resolve(), root.resolve()
    if root.name != BENCH_ROOT_NAME or root == path or root not in path.parents:
        raise AssertionError(f"refusing to touch {path}: not inside bench root {root}")
    return path


def remove(path: Path, root: Path) -> None:
    """rm -rf a target (faster than shutil.rmtree on a million entries), only under root."""
    path = under_root(path, root)
    if path.exists() or path.is_symlink():
        subprocess.run(["rm", "-rf", "--one-file-system", "--", str(path)], check=True)


def drop_caches() -> None:
    """Write back, then drop the kernel's page, dentry and inode caches (root only): what a
    run then reads of a tree comes from its disk, as a final pass after days of use finds a
    tree of 10^9 entries (never in RAM), its tools' own files included."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def verify(src: Path, dst: Path) -> list[str]:
    """rsync's itemized dry-run with checksums: empty output means DST is a faithful copy.
    Files are read with O_NOATIME, so the check leaves the atimes a following re-run compares
    as it found them."""
    proc = subprocess.run(
        ["rsync", "-aHAXc", "--open-noatime", "--numeric-ids", "-n", "-i", "--delete",
         f"{src}/", f"{dst}/"],
        capture_output=True,
        text=True,
    )
    lines = (proc.stdout + proc.stderr).splitlines()
    return lines if proc.returncode == 0 else [f"rsync rc={proc.returncode}", *lines]


def _tail(data: bytes, lines: int = 5) -> str:
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])


def launch(
    argv: list[str], env: dict[str, str], cwd: Path, timeout: float, measure_mem: bool
) -> tuple[float, int, str, procmem.MemPeak | None]:
    """Run argv once; returns (seconds, rc, stderr tail, memory peak if measured).

    The clock stops on a blocking wait (Popen.wait with a timeout polls, which rounds times
    up to 50 ms steps); a timer ends the tool's whole process group if it overstays. Output
    goes to a file, not a pipe, so a chatty tool can never block on us."""
    timed_out: list[bool] = []

    def kill_group() -> None:
        timed_out.append(True)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

    with open(os.devnull, "wb") as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(
            argv, stdout=out, stderr=err, env=env, cwd=cwd, start_new_session=True
        )
        timer = threading.Timer(timeout, kill_group)
        timer.start()
        peak = procmem.watch(proc) if measure_mem else None
        rc = proc.wait()
        seconds = time.perf_counter() - start
        timer.cancel()
        err.seek(0)
        tail = _tail(err.read())
    return seconds, rc, f"timed out after {timeout:g}s. {tail}".strip() if timed_out else tail, peak
