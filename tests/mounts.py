"""Real filesystems made by the tests: a size-limited tmpfs, loop-mounted images (ext4, XFS,
btrfs). Root only; a test without root or the mkfs tools skips, and fails under CI."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from tests.services import require, skip_or_fail


def require_root() -> None:
    if os.geteuid() != 0:
        skip_or_fail("needs root (mounts filesystems)")


def _mount(*args: str | os.PathLike[str]) -> None:
    words = [os.fspath(a) for a in args]
    proc = subprocess.run(["mount", *words], capture_output=True, check=False)
    if proc.returncode:
        skip_or_fail(f"mount {' '.join(words)} failed: "
                     f"{proc.stderr.decode(errors='replace').strip()}")


def _umount(path: Path) -> None:
    if subprocess.run(["umount", path], capture_output=True, check=False).returncode:
        subprocess.run(["umount", "-l", path], capture_output=True, check=False)


@contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (e.g. "2m") mounted on ``path`` for the block's duration."""
    require_root()
    path.mkdir(parents=True, exist_ok=True)
    _mount("-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", path)
    try:
        yield path
    finally:
        _umount(path)


def resize_tmpfs(path: Path, size: str) -> None:
    """Give a mounted tmpfs room (or take it away)."""
    subprocess.run(["mount", "-o", f"remount,size={size}", path], check=True)


@contextmanager
def loop_fs(path: Path, kind: str, size_mb: int = 64,
            mkfs_args: Sequence[str] = ()) -> Iterator[Path]:
    """A fresh ``kind`` filesystem (ext4, xfs, btrfs) in an image file, loop-mounted on
    ``path``; the image lives beside the mount point and goes with it."""
    require_root()
    mkfs = require(f"mkfs.{kind}")
    image = path.with_name(path.name + ".img")
    with open(image, "wb") as f:
        f.truncate(size_mb << 20)
    force = {"ext4": "-F", "xfs": "-f", "btrfs": "-f"}.get(kind, "")
    proc = subprocess.run([mkfs, *([force] if force else []), "-q", *mkfs_args, image],
                          capture_output=True, check=False)
    if proc.returncode:
        skip_or_fail(f"mkfs.{kind} failed: {proc.stderr.decode(errors='replace').strip()}")
    path.mkdir(parents=True, exist_ok=True)
    _mount("-o", "loop", image, path)
    try:
        yield path
    finally:
        _umount(path)
        image.unlink()
        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def bind(source: Path, path: Path) -> Iterator[Path]:
    """``source`` bind-mounted on ``path`` (made if missing) for the block's duration: one
    directory under two paths, the same (st_dev, st_ino) under both."""
    require_root()
    path.mkdir(parents=True, exist_ok=True)
    _mount("--bind", source, path)
    try:
        yield path
    finally:
        _umount(path)


@contextmanager
def read_only(path: Path) -> Iterator[Path]:
    """``path`` bind-mounted read-only on itself for the block's duration: every change below
    it fails (EROFS), root's included, which no flag fsclone carries can do (an immutable
    target directory is one fsclone unlocks when the source asks for a change)."""
    require_root()
    _mount("--bind", path, path)
    try:
        _mount("-o", "remount,bind,ro", path)
        yield path
    finally:
        _umount(path)
