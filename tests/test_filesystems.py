"""Copies between real filesystems of different kinds, made by the tests: loop-mounted XFS,
btrfs, ext4 with 128-byte inodes (whole-second times) and tmpfs. Each pair must end faithful
by the test comparator and by rsync, and a second pass over it must find nothing to do, even
where one side keeps coarser times than the other. Root only; skips without the mkfs tools,
fails under CI."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.clirun import fsclone_json
from tests.fstree import assert_rsync_clean, assert_same_tree, build_hostile_tree
from tests.mounts import loop_fs, tmpfs
from tests.services import wait_for

#: a filesystem kind, and the mkfs arguments that make the variant a pair needs
Kind = tuple[str, tuple[str, ...]]
TMPFS: Kind = ("tmpfs", ())
XFS: Kind = ("xfs", ())
BTRFS: Kind = ("btrfs", ())
EXT4: Kind = ("ext4", ())
EXT4_128: Kind = ("ext4", ("-I", "128"))  # whole seconds, times end in 2038

#: the steps of the kinds that keep coarser times than nanoseconds
STEP_NS = {EXT4_128: 10**9}

#: the symlinks of the hostile tree
LINKS = 6

PAIRS = [(TMPFS, XFS), (EXT4, BTRFS), (XFS, EXT4_128), (BTRFS, TMPFS), (EXT4_128, XFS)]


@contextmanager
def mounted(path: Path, kind: Kind) -> Iterator[Path]:
    """A fresh filesystem of ``kind`` on ``path``; yields a directory inside it, so the
    lost+found of an ext4 root is no part of the tree."""
    name, mkfs_args = kind
    if name == "tmpfs":
        with tmpfs(path, "256m") as root:
            yield root / "tree"
    else:
        with loop_fs(path, name, size_mb=300, mkfs_args=mkfs_args) as root:
            yield root / "tree"


def xattr_names(root: Path) -> list[tuple[str, str]]:
    """(path, xattr name) of every xattr below ``root``, links not followed."""
    found = []
    for top, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(top, name)
            found += [(path, x) for x in os.listxattr(path, follow_symlinks=False)]
    return found


def label(kind: Kind) -> str:
    return kind[0] + ("-128" if kind[1] else "")


@pytest.mark.parametrize(("src_kind", "dst_kind"), PAIRS,
                         ids=[f"{label(a)}-to-{label(b)}" for a, b in PAIRS])
def test_a_copy_between_two_kinds_of_filesystem_is_faithful_and_stays_done(
        tmp_path: Path, src_kind: Kind, dst_kind: Kind) -> None:
    state = tmp_path / "state"
    step = max(STEP_NS.get(src_kind, 1), STEP_NS.get(dst_kind, 1))
    with mounted(tmp_path / "src", src_kind) as src, mounted(tmp_path / "dst", dst_kind) as dst:
        src.mkdir()
        build_hostile_tree(src)
        rc, out = fsclone_json("pass", "copy", src, dst, state=state)
        assert rc == 0, out
        assert out["error_count"] == 0, out
        assert_same_tree(src, dst, time_step_ns=step)
        assert_rsync_clean(src, dst)
        if dst_kind != XFS:  # XFS's own copy of each ACL is no xattr of the file's
            assert not [p for p in xattr_names(dst) if p[1].startswith("trusted.SGI_ACL")]
        # the comparators put back atimes, moving source ctimes: a target keeping whole-second
        # ctimes can tell its copies newer than those only once that second is over
        last = max(os.lstat(os.path.join(top, n)).st_ctime_ns
                   for top, dirs, files in os.walk(src) for n in dirs + files)
        wait_for(lambda: time.time_ns() // step > last // step, 5, "the next second")
        rc, again = fsclone_json("pass", "sync", src, dst, state=state)
        assert rc == 0, again
        done = again["counters"]
        assert done.get("files_copied", 0) == 0 and done.get("deleted", 0) == 0, done
        # A source link whose ctime is not older than its copy's (the comparators above put
        # back the atimes their reads moved, which moves ctimes; or a target that keeps
        # whole-second ctimes cannot tell within the second) is read with its copy, and that
        # read moves the copy's atime, which is put back: an update of times alone, once
        assert done.get("updated", 0) <= LINKS, done
        rc, third = fsclone_json("pass", "sync", src, dst, state=state)
        assert rc == 0, third
        assert not set(third["counters"]) & {"files_copied", "updated", "deleted"}, third
        assert_same_tree(src, dst, time_step_ns=step)
        rc, checked = fsclone_json("pass", "verify", src, dst, state=state)
        assert rc == 0, checked
        assert checked["counters"].get("mismatches", 0) == 0, checked
