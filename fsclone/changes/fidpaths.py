"""Lustre FIDs to paths below SRC, through ``lfs fid2path --print-fid MOUNT FID...``.

Asked in batches (one ``lfs`` run for many FIDs) and remembered for one read of the
changelogs: the parents of a burst of records are few. Paths are what the namespace holds
now, which is what a sync of the present state needs; a FID that names nothing any more (the
object was removed since its record) has no path, and its removal is a record of its own,
whose parent still resolves.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Generator, Iterable, Sequence

from fsclone.errors import FscloneError

#: FIDs per ``lfs fid2path`` run: well inside any command-line limit
BATCH = 500
_GONE = re.compile(rb"cannot find .* (0x[0-9a-fA-F:x]+): No such file or directory$")


class ChangelogError(FscloneError):
    """An ``lfs`` command failed as a whole (missing, refused, the filesystem unreachable):
    nothing was lost, the same read can be tried again."""


def run_lfs(lfs: Sequence[str], *args: str) -> subprocess.CompletedProcess[bytes]:
    """``LFS ARGS...``, its output as bytes; a missing command is a ChangelogError."""
    try:
        return subprocess.run([*lfs, *args], capture_output=True, check=False)
    except OSError as exc:
        raise ChangelogError(f"cannot run {lfs[0]}: {exc.strerror}") from None


def stream_lfs(lfs: Sequence[str], *args: str) -> Generator[bytes, None, None]:
    """The lines ``LFS ARGS...`` prints, as it prints them (a changelog can be millions of
    records long); its failure is a ChangelogError once its output is read."""
    try:
        proc = subprocess.Popen([*lfs, *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
    except OSError as exc:
        raise ChangelogError(f"cannot run {lfs[0]}: {exc.strerror}") from None
    assert proc.stdout is not None and proc.stderr is not None
    try:
        yield from proc.stdout
        said = proc.stderr.read()
        if proc.wait() != 0:
            raise ChangelogError(f"lfs {' '.join(args)}: "
                                 f"{said.decode(errors='replace').strip()}")
    finally:
        if proc.poll() is None:  # left early: a reader that stopped at a gap
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


class FidPaths:
    """Resolve FIDs to paths relative to SRC (``b""`` is SRC itself).

    ``mount`` is the Lustre client's mount point, ``src`` SRC's path relative to it
    (``b""`` when SRC is the mount point). A FID outside SRC has no path here."""

    def __init__(self, lfs: Sequence[str], mount: str, src: bytes) -> None:
        self._lfs = tuple(lfs)
        self._mount = mount.rstrip("/") or "/"
        self._src = src.strip(b"/")
        self._known: dict[str, list[bytes]] = {}

    def forget(self) -> None:
        """Drop what was learnt: the next read resolves afresh."""
        self._known.clear()

    def paths(self, fid: str) -> list[bytes]:
        """The paths below SRC of ``fid`` (every link of a file), resolved before by
        :meth:`resolve`."""
        return self._known.get(fid, [])

    def resolve(self, fids: Iterable[str]) -> None:
        """Learn the paths of ``fids`` not known yet, in batches."""
        wanted = sorted({f for f in fids if f not in self._known})
        for start in range(0, len(wanted), BATCH):
            self._batch(wanted[start:start + BATCH])

    def _batch(self, fids: list[str]) -> None:
        done = run_lfs(self._lfs, "fid2path", "--print-fid", self._mount, *fids)
        found: dict[str, list[bytes]] = {fid: [] for fid in fids}
        gone = set()
        for line in done.stderr.splitlines():
            match = _GONE.search(line)
            if match is None:
                raise ChangelogError(line.decode(errors="replace"))
            gone.add(match[1].decode("ascii").lower())
        if done.returncode != 0 and not gone:
            raise ChangelogError(f"lfs fid2path failed (exit {done.returncode})")
        current: str | None = None
        for line in done.stdout.split(b"\n")[:-1]:
            printed, _, path = line.partition(b" ")
            key = printed.decode("ascii", errors="replace").strip("[]").lower()
            if key in found:
                current = key
                found[key].append(path)
            elif current is not None:  # a newline in a name: the path goes on
                found[current][-1] += b"\n" + line
            else:
                raise ChangelogError(f"lfs fid2path: unexpected output {line[:200]!r}")
        for key, paths in found.items():
            self._known[key] = [p for p in map(self._below_src, paths) if p is not None]

    def _below_src(self, printed: bytes) -> bytes | None:
        """A path as fid2path prints it (the mount point, then the path in the filesystem)
        relative to SRC, None when it is not below SRC."""
        mount = self._mount.encode()
        after = printed[len(mount):]
        if not printed.startswith(mount) or (mount != b"/" and after[:1] not in (b"", b"/")):
            return None
        inside = after.strip(b"/")
        if not self._src:
            return inside
        if inside == self._src:
            return b""
        if inside.startswith(self._src + b"/"):
            return inside[len(self._src) + 1:]
        return None
