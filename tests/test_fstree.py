"""Tests of the tree helper itself: a faithful copy passes, every kind of unfaithfulness fails.

Run on tmpfs (/dev/shm) and on the disk filesystem under pytest's tmp dir, since the two
differ in xattr, ACL and hole support in ways that matter to a cloner.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.fstree import (
    HOSTILE_NAMES,
    SPARSE_DATA,
    assert_rsync_clean,
    assert_same_tree,
    atime_map,
    build_hostile_tree,
    preserving_atimes,
    rsync_diff,
    snapshot,
)

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="the hostile tree needs root: chown, mknod, trusted.* xattrs"
)


@pytest.fixture(scope="module", params=["dev-shm", "tmp_path"])
def base(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    if request.param == "tmp_path":
        yield tmp_path_factory.mktemp("fstree")
        return
    path = Path(tempfile.mkdtemp(prefix="fstree-", dir="/dev/shm"))
    try:
        yield path
    finally:
        shutil.rmtree(path)


@pytest.fixture(scope="module")
def src(base: Path) -> Path:
    path = base / "src"
    path.mkdir()
    build_hostile_tree(path)
    return path


def _rsync_copy(src: Path, dst: Path) -> None:
    """A faithful copy: rsync, then src's atimes put on the copy (mtimes stay rsync's).

    rsync -U is not enough: rsync 3.5 sends atimes in whole seconds and the copy's directories
    end up with the atime of the copy.  -S is needed to keep holes."""
    with preserving_atimes(src):
        src_atimes = atime_map(src)
        cmd = [
            b"rsync",
            b"-aHAXS",
            b"--numeric-ids",
            os.fsencode(src) + b"/",
            os.fsencode(dst) + b"/",
        ]
        subprocess.run(cmd, check=True)
    root = os.fsencode(dst)
    for rel, atime in src_atimes.items():
        path = root + b"/" + rel if rel else root
        mtime = os.lstat(path).st_mtime_ns
        os.utime(path, ns=(atime, mtime), follow_symlinks=False)


@pytest.fixture
def dst(src: Path, base: Path) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="dst-", dir=base))
    try:
        _rsync_copy(src, path)
        yield path
    finally:
        shutil.rmtree(path)


def test_tree_has_every_feature(src: Path) -> None:
    tree = snapshot(src)
    kinds = {entry.kind for entry in tree.values()}
    assert kinds == {"file", "dir", "symlink", "fifo", "chr", "blk", "sock"}
    assert tree[b"dev/null-like"].rdev == os.makedev(1, 3)
    assert tree[b"dev/loop200"].rdev == os.makedev(7, 200)

    names = {rel.rsplit(b"/", 1)[-1] for rel in tree}
    assert set(HOSTILE_NAMES) <= names
    assert any(rel.count(b"/") >= 4 for rel, e in tree.items() if e.kind == "dir")
    assert tree[b"syms/bad-bytes"].target == b"target-\xff\xfe-\x01\n"

    sizes = sorted(len(e.link_group) for e in tree.values() if e.link_group)
    assert sizes == [2, 2, 3, 3, 3]

    assert tree[b"files/sparse"].data_map == SPARSE_DATA
    assert tree[b"files/big"].size == 200 * 1024 + 123

    modes = [e.mode for e in tree.values()]
    for bit in (stat.S_ISUID, stat.S_ISGID, stat.S_ISVTX):
        assert any(mode & bit for mode in modes)
    assert stat.S_IMODE(tree[b"perms/none"].mode) == 0
    assert stat.S_IMODE(tree[b"ro"].mode) == 0o555

    owners = {(e.uid, e.gid) for e in tree.values()}
    assert {(0, 0), (1234, 5678), (65000, 65001)} <= owners
    assert (tree[b"syms/relative"].uid, tree[b"syms/relative"].gid) == (1234, 5678)

    xattrs = {name for e in tree.values() for name in e.xattrs}
    assert {"user.binary", "trusted.secret", "user.dir"} <= xattrs
    assert {"system.posix_acl_access", "system.posix_acl_default"} <= xattrs
    assert tree[b"files/small"].xattrs["user.binary"] == bytes(range(256))
    assert "system.posix_acl_access" in tree[b"acldir/inherited"].xattrs


def test_times_are_distinct_nanoseconds_and_atimes_old(src: Path) -> None:
    tree = snapshot(src)
    inodes = {e.link_group or rel: (e.atime_ns or 0, e.mtime_ns) for rel, e in tree.items()}
    times = [t for pair in inodes.values() for t in pair]
    assert len(set(times)) == len(times)
    assert all(t % 1_000_000_000 for t in times)
    # relatime bumps an atime older than the mtime on any read: the atime tests rely on it.
    assert all(atime < mtime for atime, mtime in inodes.values())


def test_build_is_deterministic(src: Path, base: Path) -> None:
    other = Path(tempfile.mkdtemp(prefix="again-", dir=base))
    try:
        build_hostile_tree(other)
        assert_same_tree(src, other)
    finally:
        shutil.rmtree(other)


def test_faithful_copy_passes(src: Path, dst: Path) -> None:
    assert_same_tree(src, dst)
    assert_rsync_clean(src, dst)


def test_checking_leaves_atimes_alone(src: Path, dst: Path) -> None:
    before = atime_map(src), atime_map(dst)
    snapshot(src)
    assert_same_tree(src, dst)
    assert rsync_diff(src, dst) == []
    assert (atime_map(src), atime_map(dst)) == before


def test_preserving_atimes_undoes_reads(src: Path) -> None:
    before = atime_map(src)
    with preserving_atimes(src):
        (src / "files" / "small").read_bytes()
        os.listdir(src / "nest")
        os.readlink(src / "syms" / "relative")
        assert atime_map(src) != before
    assert atime_map(src) == before


def test_ignore_root_times(src: Path, dst: Path) -> None:
    st = os.lstat(dst)
    os.utime(dst, ns=(st.st_atime_ns + 1, st.st_mtime_ns + 1))
    with pytest.raises(AssertionError, match=r"b'': mtime_ns"):
        assert_same_tree(src, dst)
    assert_same_tree(src, dst, ignore_root_times=True)


def test_atime_only_checked_when_asked(src: Path, dst: Path) -> None:
    path = dst / "files" / "small"
    st = os.lstat(path)
    os.utime(path, ns=(st.st_atime_ns - 1, st.st_mtime_ns))
    with pytest.raises(AssertionError, match=r"b'files/small': atime_ns"):
        assert_same_tree(src, dst)
    assert_same_tree(src, dst, atime=False)


def test_difference_list_is_bounded(src: Path, dst: Path) -> None:
    for rel in snapshot(dst):
        path = os.fsencode(dst) + b"/" + rel if rel else os.fsencode(dst)
        st = os.lstat(path)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1), follow_symlinks=False)
    with pytest.raises(AssertionError) as caught:
        assert_same_tree(src, dst)
    lines = str(caught.value).splitlines()
    assert len(lines) == 52  # the count, 50 differences, "... and N more"
    assert lines[-1].startswith("... and ")


# --- mutations of a faithful copy, each of which must be caught -----------------------------


@contextlib.contextmanager
def _times_kept(*paths: bytes) -> Iterator[None]:
    """Restore atime and mtime of paths, so a mutation changes only what it means to."""
    saved = [(path, os.lstat(path)) for path in paths]
    yield
    for path, st in saved:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def _read(path: bytes) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOATIME)
    try:
        return os.pread(fd, os.fstat(fd).st_size, 0)
    finally:
        os.close(fd)


def _flip_byte(d: bytes) -> bytes:
    path = d + b"/files/big"
    with _times_kept(path):
        fd = os.open(path, os.O_RDWR | os.O_NOATIME)
        try:
            os.pwrite(fd, bytes([os.pread(fd, 1, 1000)[0] ^ 0x01]), 1000)
        finally:
            os.close(fd)
    return b"files/big"


def _chmod(d: bytes) -> bytes:
    os.chmod(d + b"/files/small", 0o600)
    return b"files/small"


def _chown(d: bytes) -> bytes:
    os.chown(d + b"/perms/rw-r", 4321, 0)
    return b"perms/rw-r"


def _lchown_symlink(d: bytes) -> bytes:
    os.lchown(d + b"/syms/relative", 1234, 5679)
    return b"syms/relative"


def _change_xattr(d: bytes) -> bytes:
    os.setxattr(d + b"/files/small", "user.binary", bytes(reversed(range(256))))
    return b"files/small"


def _change_acl(d: bytes) -> bytes:
    subprocess.run([b"setfacl", b"-m", b"u:1234:r", d + b"/files/acl"], check=True)
    return b"files/acl"


def _retarget_symlink(d: bytes) -> bytes:
    path = d + b"/syms/relative"
    st = os.lstat(path)
    with _times_kept(path, d + b"/syms"):
        os.unlink(path)
        os.symlink(b"../files/empty", path)  # same length as ../files/small
        os.lchown(path, st.st_uid, st.st_gid)
    return b"syms/relative"


def _replace_by_copy(d: bytes, rel: bytes) -> bytes:
    """Break a hard link: the name gets its own inode with identical content and metadata."""
    path = d + b"/" + rel
    parent = path.rsplit(b"/", 1)[0]
    st = os.lstat(path)
    data = _read(path)
    xattrs = {name: os.getxattr(path, name) for name in os.listxattr(path)}
    with _times_kept(path, parent):
        os.unlink(path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
            os.fchown(fd, st.st_uid, st.st_gid)
            os.fchmod(fd, stat.S_IMODE(st.st_mode))
            for name, value in xattrs.items():
                os.setxattr(fd, name, value)
        finally:
            os.close(fd)
    return rel


def _fill_holes(d: bytes) -> bytes:
    path = d + b"/files/sparse"
    with _times_kept(path):
        data = _read(path)
        fd = os.open(path, os.O_WRONLY)
        try:
            os.pwrite(fd, data, 0)
        finally:
            os.close(fd)
    return b"files/sparse"


def _add_file(d: bytes) -> bytes:
    with _times_kept(d + b"/files"):
        Path(os.fsdecode(d + b"/files/extra")).write_bytes(b"")
    return b"files/extra"


def _remove_file(d: bytes) -> bytes:
    with _times_kept(d + b"/names"):
        os.unlink(d + b"/names/\xff\xfe")
    return b"names/\xff\xfe"


def _mtime_plus_1ns(d: bytes) -> bytes:
    path = d + b"/syms/to-dir"
    st = os.lstat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1), follow_symlinks=False)
    return b"syms/to-dir"


MUTATIONS: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "byte flipped": (_flip_byte, "content differs"),
    "mode": (_chmod, "mode 0o100640 != 0o100600"),
    "owner": (_chown, "uid 0 != 4321"),
    "symlink owner": (_lchown_symlink, "gid 5678 != 5679"),
    "xattr value": (_change_xattr, "xattr 'user.binary' differs"),
    "ACL": (_change_acl, "ACL 'system.posix_acl_access' differs"),
    "symlink target": (_retarget_symlink, "symlink target b'../files/small' != b'../files/empty'"),
    "hard link pair broken": (lambda d: _replace_by_copy(d, b"links/b"), "hard links differ"),
    "hard link trio broken": (lambda d: _replace_by_copy(d, b"ro/tri-3"), "hard links differ"),
    "hole filled": (_fill_holes, "holes differ"),
    "extra file": (_add_file, "extra in dst"),
    "missing file": (_remove_file, "missing in dst"),
    "mtime off by 1 ns": (_mtime_plus_1ns, "mtime_ns"),
}


@pytest.mark.parametrize("mutation", MUTATIONS)
def test_mutation_is_detected(src: Path, dst: Path, mutation: str) -> None:
    mutate, expected = MUTATIONS[mutation]
    rel = mutate(os.fsencode(dst))
    with pytest.raises(AssertionError) as caught:
        assert_same_tree(src, dst)
    assert f"{rel!r}: {expected}" in str(caught.value)


def test_rsync_diff_reports_a_flipped_byte(src: Path, dst: Path) -> None:
    _flip_byte(os.fsencode(dst))
    lines = rsync_diff(src, dst)
    assert len(lines) == 1 and lines[0].endswith("files/big"), lines
    with pytest.raises(AssertionError, match="files/big"):
        assert_rsync_clean(src, dst)
