"""faultfs from Python: build the daemon, mount it over a backing directory, steer its faults.

    with FaultFS(backing, mountpoint) as fs:
        fs.fail("WRITE", "EIO", offset=3 << 20)
        ...                      # whatever runs on mountpoint now meets the fault
        fs.clear()
        fs.counters()["WRITE"]

The daemon (faultfs.c beside this file) is compiled once per version of its source into a
cache directory, so every test and benchmark run shares one build. See README.md.
"""

from __future__ import annotations

import ctypes
import hashlib
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

SOURCE = Path(__file__).with_name("faultfs.c")
_CFLAGS = ("-O2", "-Wall", "-Wno-format-truncation")
_MOUNT_TIMEOUT = 10.0
_STOP_TIMEOUT = 10.0
_PR_SET_PDEATHSIG = 1


class FaultFSUnavailable(RuntimeError):
    """This machine cannot build or mount faultfs (no gcc, libfuse3, /dev/fuse, fusermount3)."""


class FaultFSError(RuntimeError):
    """The daemon refused a command, or died."""


def cache_dir() -> Path:
    """Where builds live: $FAULTFS_CACHE, else the user's cache directory."""
    if env := os.environ.get("FAULTFS_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fsclone-faultfs"


def _fuse_flags() -> list[str]:
    if shutil.which("pkg-config") is None:
        raise FaultFSUnavailable("pkg-config is not installed (Debian: pkg-config)")
    proc = subprocess.run(["pkg-config", "--cflags", "--libs", "fuse3"], capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        raise FaultFSUnavailable("libfuse3 development files are missing (Debian: libfuse3-dev)")
    return proc.stdout.split()


def build() -> Path:
    """The faultfs executable for the current source, compiled first if need be.

    The build goes to a temporary name and is renamed into place, so concurrent builders
    (tests and a benchmark) never run a half-written binary.
    """
    source = SOURCE.read_bytes()
    key = hashlib.sha256(source + " ".join(_CFLAGS).encode()).hexdigest()[:16]
    binary = cache_dir() / key / "faultfs"
    if binary.exists():
        return binary
    compiler = shutil.which("gcc")
    if compiler is None:
        raise FaultFSUnavailable("gcc is not installed")
    flags = _fuse_flags()
    binary.parent.mkdir(parents=True, exist_ok=True)
    partial = binary.with_name(f"faultfs.{os.getpid()}.tmp")
    proc = subprocess.run([compiler, *_CFLAGS, "-o", str(partial), str(SOURCE), *flags],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        partial.unlink(missing_ok=True)
        raise FaultFSError(f"building faultfs failed:\n{proc.stderr}")
    partial.replace(binary)
    return binary


def check_available() -> None:
    """Raise FaultFSUnavailable unless this machine can mount faultfs at all."""
    if not os.path.exists("/dev/fuse"):
        raise FaultFSUnavailable("/dev/fuse is missing (no FUSE in this kernel or container)")
    if shutil.which("fusermount3") is None:
        raise FaultFSUnavailable("fusermount3 is not installed (Debian: fuse3)")
    if os.geteuid() != 0:
        raise FaultFSUnavailable("faultfs mounts need root (allow_other over any user's files)")


def _escape(word: str | bytes) -> str:
    """A word of the control protocol: spaces, backslashes and non-ASCII bytes as \\xHH."""
    raw = os.fsencode(word)
    return "".join(chr(b) if 0x21 <= b < 0x7F and b != 0x5C else f"\\x{b:02x}" for b in raw)


def _unescape_mountinfo(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _die_with_parent() -> None:
    """In the daemon before exec: if the test or benchmark dies, unmount (SIGTERM) and go."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class FaultFS:
    """faultfs mounted on ``mountpoint`` over ``backing`` for the life of the context.

    ``entry_timeout`` and ``attr_timeout`` are the kernel's cache lifetimes in seconds: 0 (the
    default) sends every lookup and stat to the daemon and so shows changes made to the backing
    tree directly at once. ``direct_io`` bypasses the page cache, so each read or write call
    reaches the daemon as it was made.
    """

    def __init__(self, backing: str | os.PathLike[str], mountpoint: str | os.PathLike[str], *,
                 entry_timeout: float = 0.0, attr_timeout: float = 0.0,
                 direct_io: bool = False) -> None:
        self.backing = Path(backing)
        self.mountpoint = Path(mountpoint)
        self.entry_timeout = entry_timeout
        self.attr_timeout = attr_timeout
        self.direct_io = direct_io
        self._workdir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._reader: io.TextIOWrapper | None = None

    # --- mount and unmount --------------------------------------------------------------

    def __enter__(self) -> Self:
        check_available()
        binary = build()
        self._workdir = Path(tempfile.mkdtemp(prefix="faultfs-"))
        control = self._workdir / "control"
        options = [f"source={self.backing}", f"control={control}",
                   f"entry_timeout={self.entry_timeout}", f"attr_timeout={self.attr_timeout}",
                   "allow_other", "default_permissions", "fsname=faultfs", "subtype=faultfs"]
        if self.direct_io:
            options.append("direct_io")
        with open(self._workdir / "log", "wb") as log:  # the daemon keeps its own copy
            self._proc = subprocess.Popen(
                [str(binary), "-f", "-o", ",".join(options), str(self.mountpoint)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_die_with_parent)
        try:
            self._wait_mounted()
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._sock.connect(str(control))
            self._reader = self._sock.makefile("r", encoding="ascii")
        except BaseException:
            self._stop()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop()

    def _wait_mounted(self) -> None:
        deadline = time.monotonic() + _MOUNT_TIMEOUT
        while not os.path.ismount(self.mountpoint):
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise FaultFSError(f"faultfs exited with {self._proc.returncode}:\n"
                                   f"{self.log()}")
            if time.monotonic() > deadline:
                raise FaultFSError(f"faultfs did not mount within {_MOUNT_TIMEOUT:.0f}s:\n"
                                   f"{self.log()}")
            time.sleep(0.01)

    def _mounted(self) -> bool:
        """Whether a mount sits on the mountpoint, a dead daemon's too (whose mountpoint
        os.path.ismount cannot stat: ENOTCONN)."""
        target = os.path.realpath(self.mountpoint)
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            # field 5 is the mount point, with space, tab, newline and backslash octal-escaped
            return any(_unescape_mountinfo(line.split()[4]) == target for line in f)

    def log(self) -> str:
        """What the daemon printed (errors at start, mostly)."""
        if self._workdir is None:
            return ""
        try:
            return (self._workdir / "log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _stop(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._proc is not None and self._mounted():
            umount = subprocess.run(["fusermount3", "-u", str(self.mountpoint)],
                                    capture_output=True, check=False)
            if umount.returncode != 0:  # busy: detach now, the kernel ends it when unused
                subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)],
                               capture_output=True, check=False)
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.terminate()
            try:
                self._proc.wait(_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    # --- control ------------------------------------------------------------------------

    def command(self, *words: str | bytes) -> str:
        """Send one control line; returns the reply, raises FaultFSError on ``error ...``."""
        if self._sock is None or self._reader is None:
            raise FaultFSError("faultfs is not mounted")
        self._sock.sendall((" ".join(_escape(w) for w in words) + "\n").encode("ascii"))
        reply = self._reader.readline().rstrip("\n")
        if not reply:
            raise FaultFSError(f"faultfs closed the control socket:\n{self.log()}")
        if reply.startswith("error"):
            raise FaultFSError(f"faultfs refused {' '.join(map(str, words))!r}: {reply}")
        return reply

    def fail(self, op: str, err: str | int, *, path: str | bytes | None = None,
             offset: int | None = None, start: int | None = None, nth: int | None = None,
             count: int | None = None) -> None:
        """Fail requests of type ``op`` with ``err`` (a name such as "EIO", or a number).

        ``path``: only on entries whose path relative to the mount root matches this fnmatch
        pattern (``*`` also matches ``/``); ``offset``: only a READ/WRITE covering this byte;
        ``start``: only a READ/WRITE reaching this byte or beyond; ``nth``: from the n-th
        matching call on; ``count``: that many times (default: forever).
        """
        words: list[str | bytes] = ["fail", op, str(err)]
        if path is not None:
            words.append(b"path=" + os.fsencode(path))
        for key, value in (("offset", offset), ("from", start), ("nth", nth), ("count", count)):
            if value is not None:
                words.append(f"{key}={value}")
        self.command(*words)

    def delay(self, op: str, usec: int) -> None:
        """Delay every request of type ``op`` (``*``: all, ``meta``: all but data) by usec."""
        self.command("delay", op, str(usec))

    def clear(self) -> None:
        """Drop every fault rule (delays stay)."""
        self.command("clear")

    def reset(self) -> None:
        """Zero the request counters."""
        self.command("reset")

    def cpu_seconds(self) -> float:
        """The daemon's user plus system CPU so far (all its threads), from /proc/PID/stat:
        what serving the requests cost, the delays being sleeps."""
        if self._proc is None:
            raise FaultFSError("faultfs is not mounted")
        # fields 14 and 15 (utime, stime), counted after the command name's closing paren
        fields = Path(f"/proc/{self._proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def counters(self) -> dict[str, int]:
        """Requests seen per type, ``injected.TYPE`` per type that failed, ``injected``."""
        counts: dict[str, int] = json.loads(self.command("counters"))
        return counts
