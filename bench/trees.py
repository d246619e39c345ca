"""Deterministic (seeded) source trees for the benchmarks, cached so repeated runs reuse them.

Every generator is a pure function of its arguments: the same call makes a byte-identical tree
(names, sizes, contents, modes, mtimes, links), so results from different runs compare alike.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

MiB = 1 << 20
KiB = 1 << 10

#: bump when a generator changes, so stale cached trees are rebuilt instead of reused
GENERATOR_VERSION = 1

#: mtimes are fixed (2021-01-01 plus a seeded offset) so regenerated trees are identical
BASE_MTIME = 1_609_459_200

FILES_PER_DIR = 100
ENTRIES_PER_DIR = 1000


def _leaf_dirs(root: Path, n_leaves: int) -> list[Path]:
    """Make a two-level grid of about sqrt(n) x sqrt(n) leaf directories under root."""
    fanout = max(1, math.ceil(math.sqrt(n_leaves)))
    leaves = []
    for i in range(n_leaves):
        leaf = root / f"d{i // fanout:03d}" / f"s{i % fanout:03d}"
        leaf.mkdir(parents=True, exist_ok=True)
        leaves.append(leaf)
    return leaves


def _small_size(rng: random.Random) -> int:
    """Log-uniform 0..64 KiB: most files are a few KiB, as in real home and project trees."""
    return int(2 ** rng.uniform(0, 16)) - 1


def _write_file(path: Path, data: bytes | memoryview, mode: int, mtime: int) -> None:
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)
    os.utime(path, (mtime, mtime))


def small_files(root: Path, n: int = 50_000, seed: int = 1) -> None:
    """n files of 0..64 KiB, ~100 per directory in 3 levels, with a few symlinks, hard links
    and user xattrs, so a copy that drops -H, -X or symlinks shows up in verification."""
    rng = random.Random(seed)
    pool = rng.randbytes(MiB + 64 * KiB)
    leaves = _leaf_dirs(root, max(1, math.ceil(n / FILES_PER_DIR)))
    files: list[Path] = []
    for i in range(n):
        path = leaves[i // FILES_PER_DIR] / f"f{i:07d}.dat"
        size, offset = _small_size(rng), rng.randrange(MiB)
        mode = rng.choice((0o644, 0o644, 0o640, 0o600, 0o755))
        _write_file(path, memoryview(pool)[offset : offset + size], mode, BASE_MTIME + i)
        files.append(path)
    _sprinkle_links(rng, files)


def _sprinkle_links(rng: random.Random, files: list[Path]) -> None:
    """Every ~500th file gets a hard link elsewhere, a relative symlink and an xattr."""
    for k in range(0, len(files), 500):
        target, other = files[k], rng.choice(files)
        os.link(target, other.parent / f"hl{k:07d}.dat")
        os.symlink(os.path.relpath(target, other.parent), other.parent / f"sl{k:07d}.lnk")
        os.setxattr(target, "user.bench", f"tag-{k}".encode())
    if files:
        os.symlink("does-not-exist", files[0].parent / "dangling.lnk")


def large_files(root: Path, n: int = 4, size: int = 256 * MiB, seed: int = 2) -> None:
    """n incompressible files of `size` bytes, written in 1 MiB seeded-random blocks."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        with open(root / f"large{i:02d}.bin", "wb") as f:
            left = size
            while left > 0:
                block = rng.randbytes(min(MiB, left))
                f.write(block)
                left -= len(block)


def entries(root: Path, n: int, seed: int = 3) -> None:
    """n empty files (1% hold a few bytes) in directories of ~1000, made with bare os.open
    calls relative to a directory fd so that a million entries take seconds, not minutes."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    for d in range(math.ceil(n / ENTRIES_PER_DIR)):
        (root / f"e{d:05d}").mkdir()
        dfd = os.open(root / f"e{d:05d}", os.O_RDONLY | os.O_DIRECTORY)
        try:
            for i in range(d * ENTRIES_PER_DIR, min(n, (d + 1) * ENTRIES_PER_DIR)):
                fd = os.open(f"{i:07d}", flags, 0o644, dir_fd=dfd)
                if rng.random() < 0.01:
                    os.write(fd, b"x" * rng.randrange(1, 64))
                os.close(fd)
        finally:
            os.close(dfd)


def _du(root: Path, *flags: str) -> int:
    """du's total for root; du counts hard-linked files once, as the copy tools do."""
    out = subprocess.run(
        ["du", "-s", "--apparent-size", "-B1", *flags, str(root)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return int(out.split()[0])


def cached(
    trees_dir: Path, name: str, make: Callable[[Path], None], log: Callable[[str], None]
) -> dict[str, int | str]:
    """Return facts about trees_dir/name, generating it first unless a finished copy exists.

    A marker file beside (not inside) the tree records completion, so an interrupted
    generation is thrown away and redone rather than benchmarked half-made."""
    root = trees_dir / f"{name}.v{GENERATOR_VERSION}"
    marker = root.with_name(root.name + ".done")
    if not marker.exists():
        if root.exists():
            shutil.rmtree(root)
        log(f"generating {root} ...")
        root.mkdir(parents=True)
        make(root)
        facts = {"inodes": _du(root, "--inodes"), "bytes": _du(root)}
        marker.write_text(json.dumps(facts))
    return {"path": str(root), **json.loads(marker.read_text())}



def change_counts(n: int, fraction: float) -> dict[str, int]:
    """How many of n files a `changed` copy modifies, deletes and creates: `fraction` of n in
    all (at least 3, so each kind occurs), a fifth each deleted and created, the rest
    modified."""
    k = max(3, round(n * fraction))
    return {"modified": k - 2 * (k // 5), "deleted": k // 5, "created": k // 5}


def changed(src: Path, root: Path, counts: dict[str, int], stamp: int, seed: int = 4) -> None:
    """root as a copy of the small-files tree src with counts["modified"] of its files
    rewritten (new size, bytes and an mtime from `stamp` on), counts["deleted"] deleted and
    counts["created"] new ones, drawn at random across its directories: a sync's worth of
    change. Only files without hard links are touched (at most all of them), so the tree's
    links stay as they were. src's atimes are put back after the copy read it, so the
    unchanged files have the same atimes in both trees (as in copies made from src)."""
    times = {p: p.lstat() for p in [src, *src.rglob("*")]}
    subprocess.run(["cp", "-a", f"{src}/.", str(root)], check=True)
    for path, st in times.items():
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
    rng = random.Random(seed)
    pool = rng.randbytes(MiB + 64 * KiB)
    files = sorted(p for p in root.rglob("*.dat") if p.lstat().st_nlink == 1)
    picked = rng.sample(files, min(len(files), counts["modified"] + counts["deleted"]))
    for i, path in enumerate(picked[: counts["modified"]]):
        size, offset = _small_size(rng) + 1, rng.randrange(MiB)
        mode = path.lstat().st_mode & 0o7777
        _write_file(path, memoryview(pool)[offset : offset + size], mode, stamp + i)
    for path in picked[counts["modified"] :]:
        path.unlink()
    dirs = sorted({p.parent for p in files})
    for i in range(counts["created"]):
        size, offset = _small_size(rng), rng.randrange(MiB)
        path = rng.choice(dirs) / f"new{i:07d}.dat"
        _write_file(path, memoryview(pool)[offset : offset + size], 0o644, stamp + i)


def unlinked_files(root: Path) -> int:
    """The files of a small-files tree that `changed` can rewrite: those without hard links."""
    return sum(1 for p in root.rglob("*.dat") if p.lstat().st_nlink == 1)
