"""Build a tree of every hostile POSIX case, and prove that a copy of it is exactly faithful.

Every path here is bytes, so that names which are not UTF-8 survive untouched.  Reading a
tree never changes an atime: a test that checks a cloner left its source alone must not be
fooled by the checker itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import os
import random
import socket
import stat
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

PathArg = str | bytes | os.PathLike[str] | os.PathLike[bytes]

_NOATIME = getattr(os, "O_NOATIME", 0)
_SEED = 0x5EED_F5C1
_KIB = 1024
SPARSE_SIZE = 1024 * _KIB
# Data segments of files/sparse; the holes before, between and after them are the point.
SPARSE_DATA = ((256 * _KIB, 320 * _KIB), (640 * _KIB, 704 * _KIB))
HOSTILE_NAMES = (
    b"new\nline",
    b"tab\there",
    b"  spaces  and trailing ",
    b"-leading-dash",
    b"*?[]",
    b"back\\slash",
    b"quotes'\"`",
    b"\xff\xfe",
    "caf\u00e9-\u65e5\u672c-\U0001f600".encode(),
    b"L" * 255,
    b".hidden",
)
_NOT_SUPPORTED = (errno.ENOTSUP, errno.EOPNOTSUPP)
#: XFS lists a POSIX ACL a second time, under its on-disk name: the ACL is compared once, as
#: its ``system.posix_acl_*`` name
_ACL_VIEWS = frozenset({"trusted.SGI_ACL_FILE", "trusted.SGI_ACL_DEFAULT"})
# _IOR(type, nr, size) = 2 << 30 | size << 16 | type << 8 | nr (x86_64):
_FSGETXATTR = 2 << 30 | 28 << 16 | ord("X") << 8 | 31  # FS_IOC_FSGETXATTR, struct fsxattr
_GETFLAGS = 2 << 30 | 8 << 16 | ord("f") << 8 | 1  # FS_IOC_GETFLAGS, a long
#: the chattr flags a faithful copy keeps: sync, immutable, append, nodump, noatime, dirsync,
#: projinherit (others, such as extents or inline data, are the filesystem's own business)
POLICY_FLAGS = 0x8 | 0x10 | 0x20 | 0x40 | 0x80 | 0x10000 | 0x20000000


@dataclasses.dataclass(frozen=True)
class Entry:
    """Everything a faithful clone must reproduce about one directory entry.

    size and nlink are None for directories: they depend on the filesystem's directory format
    (btrfs counts a directory's links as 1, others as 2 + subdirectories), which a cloner
    cannot set.  link_group is the sorted tuple of every path in the tree that shares
    this inode, so it compares equal across trees with different inode numbers.
    """

    kind: str
    mode: int
    uid: int
    gid: int
    size: int | None
    mtime_ns: int
    atime_ns: int | None
    nlink: int | None
    rdev: int | None = None
    target: bytes | None = None
    xattrs: dict[str, bytes] = dataclasses.field(default_factory=dict)
    digest: str | None = None
    data_map: tuple[tuple[int, int], ...] | None = None
    link_group: tuple[bytes, ...] | None = None
    #: project ID and POLICY_FLAGS of files and directories; None where the filesystem has
    #: none, and then not compared
    projid: int | None = None
    flags: int | None = None


def _join(parent: bytes, name: bytes) -> bytes:
    return parent + b"/" + name if parent else name


def _open_noatime(path: bytes, flags: int) -> int:
    """Open without touching atime; O_NOATIME needs ownership or CAP_FOWNER, hence the retry."""
    try:
        return os.open(path, flags | _NOATIME | os.O_CLOEXEC)
    except PermissionError:
        return os.open(path, flags | os.O_CLOEXEC)


def _lstat_tree(root: bytes) -> dict[bytes, os.stat_result]:
    """lstat every entry under root, keyed by relative path (b"" for root), never following
    symlinks and listing directories through O_NOATIME descriptors."""
    stats = {b"": os.lstat(root)}
    pending = [b""]
    while pending:
        rel = pending.pop()
        path = _join(root, rel) if rel else root
        fd = _open_noatime(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            with os.scandir(fd) as entries:
                for entry in entries:
                    child = _join(rel, os.fsencode(entry.name))
                    st = entry.stat(follow_symlinks=False)
                    stats[child] = st
                    if stat.S_ISDIR(st.st_mode):
                        pending.append(child)
        finally:
            os.close(fd)
    return stats


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISREG, "file"),
        (stat.S_ISDIR, "dir"),
        (stat.S_ISLNK, "symlink"),
        (stat.S_ISFIFO, "fifo"),
        (stat.S_ISCHR, "chr"),
        (stat.S_ISBLK, "blk"),
        (stat.S_ISSOCK, "sock"),
    ):
        if test(mode):
            return name
    raise ValueError(f"unknown file type {mode:#o}")


def _xattrs(path: bytes) -> dict[str, bytes]:
    """All namespaces, ACLs included; symlinks and some filesystems refuse xattrs outright."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as e:
        if e.errno in (*_NOT_SUPPORTED, errno.EPERM):
            return {}
        raise
    return {name: os.getxattr(path, name, follow_symlinks=False) for name in sorted(names)
            if name not in _ACL_VIEWS}


def _data_map(fd: int, size: int) -> tuple[tuple[int, int], ...]:
    """The (start, end) data segments of an open file, as SEEK_DATA/SEEK_HOLE report them."""
    segments: list[tuple[int, int]] = []
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:  # only a hole remains
                break
            raise
        pos = os.lseek(fd, start, os.SEEK_HOLE)
        segments.append((start, pos))
    return tuple(segments)


def _read_file(path: bytes, size: int) -> tuple[str, tuple[tuple[int, int], ...]]:
    fd = _open_noatime(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        data_map = _data_map(fd, size)
        os.lseek(fd, 0, os.SEEK_SET)
        digest = hashlib.blake2b()
        while chunk := os.read(fd, 1 << 20):
            digest.update(chunk)
    finally:
        os.close(fd)
    return digest.hexdigest(), data_map


def inode_attrs(path: PathArg) -> tuple[int | None, int | None]:
    """The project ID and POLICY_FLAGS of a file or directory (None: the filesystem has none),
    read through an O_NOATIME descriptor."""
    fd = _open_noatime(os.fsencode(path), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    out: list[int | None] = []
    try:
        for request, shape, at in ((_FSGETXATTR, "=IIIII8x", 3), (_GETFLAGS, "=I4x", 0)):
            try:
                raw = fcntl.ioctl(fd, request, bytes(struct.calcsize(shape)))
            except OSError as e:
                if e.errno not in (*_NOT_SUPPORTED, errno.ENOTTY, errno.EINVAL):
                    raise
                out.append(None)
            else:
                out.append(struct.unpack(shape, raw)[at])
    finally:
        os.close(fd)
    projid, flags = out
    return projid, None if flags is None else flags & POLICY_FLAGS


def _readlink(path: bytes, st: os.stat_result) -> bytes:
    """readlink(2) always touches the link's atime and has no O_NOATIME, so put it back."""
    target = os.readlink(path)
    after = os.lstat(path)
    if after.st_atime_ns != st.st_atime_ns:
        os.utime(path, ns=(st.st_atime_ns, after.st_mtime_ns), follow_symlinks=False)
    return target


def snapshot(root: PathArg, *, atime: bool = True) -> dict[bytes, Entry]:
    """Every entry under root, keyed by relative path (b"" is root itself).

    All lstat data, atimes included, is taken before any file is opened or link is read.
    """
    base = os.fsencode(root)
    stats = _lstat_tree(base)
    inodes: dict[tuple[int, int], list[bytes]] = {}
    for rel, st in stats.items():
        if not stat.S_ISDIR(st.st_mode):
            inodes.setdefault((st.st_dev, st.st_ino), []).append(rel)
    groups = {key: tuple(sorted(paths)) for key, paths in inodes.items() if len(paths) > 1}

    tree: dict[bytes, Entry] = {}
    for rel, st in sorted(stats.items()):
        path = _join(base, rel) if rel else base
        kind = _kind(st.st_mode)
        entry = Entry(
            kind=kind,
            mode=st.st_mode,
            uid=st.st_uid,
            gid=st.st_gid,
            size=None if kind == "dir" else st.st_size,
            mtime_ns=st.st_mtime_ns,
            atime_ns=st.st_atime_ns if atime else None,
            nlink=None if kind == "dir" else st.st_nlink,
            rdev=st.st_rdev if kind in ("chr", "blk") else None,
            xattrs=_xattrs(path),
            link_group=groups.get((st.st_dev, st.st_ino)),
        )
        if kind in ("file", "dir"):
            projid, flags = inode_attrs(path)
            entry = dataclasses.replace(entry, projid=projid, flags=flags)
        if kind == "symlink":
            entry = dataclasses.replace(entry, target=_readlink(path, st))
        elif kind == "file":
            digest, data_map = _read_file(path, st.st_size)
            entry = dataclasses.replace(entry, digest=digest, data_map=data_map)
        tree[rel] = entry
    return tree


def atime_map(root: PathArg) -> dict[bytes, int]:
    """atime of every entry, from lstat alone, to check that something left a tree alone."""
    return {rel: st.st_atime_ns for rel, st in _lstat_tree(os.fsencode(root)).items()}


#: the fields compared at the coarser time step of a pair of filesystems
_TIMES = frozenset({"mtime_ns", "atime_ns"})


def _entry_diffs(a: Entry, b: Entry, skip: frozenset[str], time_step_ns: int = 1) -> list[str]:
    if a.kind != b.kind:
        return [f"type {a.kind} != {b.kind}"]
    diffs = []
    for field in dataclasses.fields(Entry):
        name = field.name
        x, y = getattr(a, name), getattr(b, name)
        if name in _TIMES and time_step_ns > 1 and x is not None and y is not None:
            x, y = x - x % time_step_ns, y - y % time_step_ns
        if name in skip or x == y or (name in ("projid", "flags") and None in (x, y)):
            continue
        if name == "mode":
            diffs.append(f"mode {x:#o} != {y:#o}")
        elif name == "xattrs":
            diffs.extend(_xattr_diffs(x, y))
        elif name == "digest":
            diffs.append("content differs")
        elif name == "data_map":
            diffs.append(f"holes differ: data {_short(x)} != {_short(y)}")
        elif name == "link_group":
            diffs.append(f"hard links differ: {_short(x)} != {_short(y)}")
        elif name == "target":
            diffs.append(f"symlink target {x!r} != {y!r}")
        elif name == "flags":
            diffs.append(f"flags {x:#x} != {y:#x}")
        else:
            diffs.append(f"{name} {x!r} != {y!r}")
    return diffs


def _xattr_diffs(a: dict[str, bytes], b: dict[str, bytes]) -> list[str]:
    diffs = []
    for name in sorted(a.keys() | b.keys()):
        kind = "ACL" if name.startswith("system.posix_acl") else "xattr"
        label = f"{kind} {name!r}"
        if name not in b:
            diffs.append(f"{label} missing in dst")
        elif name not in a:
            diffs.append(f"{label} extra in dst")
        elif a[name] != b[name]:
            diffs.append(f"{label} differs: {_short(a[name])} != {_short(b[name])}")
    return diffs


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def tree_diffs(
    src: dict[bytes, Entry],
    dst: dict[bytes, Entry],
    *,
    ignore_root_times: bool = False,
    time_step_ns: int = 1,
) -> list[str]:
    """Every difference between two snapshots, one readable line each, sorted by path; times
    compared at ``time_step_ns`` (a side that keeps whole seconds: 10**9)."""
    diffs = []
    for rel in sorted(src.keys() | dst.keys()):
        if rel not in dst:
            diffs.append(f"{rel!r}: missing in dst")
        elif rel not in src:
            diffs.append(f"{rel!r}: extra in dst")
        else:
            skip = frozenset({"mtime_ns", "atime_ns"} if ignore_root_times and not rel else ())
            diffs.extend(f"{rel!r}: {d}"
                         for d in _entry_diffs(src[rel], dst[rel], skip, time_step_ns))
    return diffs


def assert_same_tree(
    src: PathArg,
    dst: PathArg,
    *,
    atime: bool = True,
    ignore_root_times: bool = False,
    time_step_ns: int = 1,
    limit: int = 50,
) -> None:
    """Fail with the first `limit` differences if dst is not an exact replica of src (times
    at ``time_step_ns``: see :func:`tree_diffs`)."""
    diffs = tree_diffs(
        snapshot(src, atime=atime),
        snapshot(dst, atime=atime),
        ignore_root_times=ignore_root_times,
        time_step_ns=time_step_ns,
    )
    if diffs:
        shown = diffs[:limit]
        if len(diffs) > limit:
            shown.append(f"... and {len(diffs) - limit} more")
        raise AssertionError(f"{len(diffs)} difference(s):\n" + "\n".join(shown))


@contextlib.contextmanager
def preserving_atimes(*roots: PathArg) -> Iterator[None]:
    """Put back every atime under roots that the body changed, keeping current mtimes.

    For tools we do not control (rsync), which read files, directories and symlinks
    without O_NOATIME so that relatime moves atimes older than the ctime.
    """
    before = [(os.fsencode(root), atime_map(root)) for root in roots]
    try:
        yield
    finally:
        for base, atimes in before:
            for rel, st in _lstat_tree(base).items():
                old = atimes.get(rel)
                if old is not None and old != st.st_atime_ns:
                    path = _join(base, rel) if rel else base
                    os.utime(path, ns=(old, st.st_mtime_ns), follow_symlinks=False)


def rsync_diff(src: PathArg, dst: PathArg) -> list[str]:
    """rsync's own itemized view of what differs (checksums, ACLs, xattrs, hard links).

    A second opinion that does not share our snapshot code; it leaves atimes as they were.
    XFS's second listing of each ACL is left out of rsync's xattrs, as out of ours (rsync
    would copy those bytes to another filesystem as an xattr, and delete them, and with them
    the ACL, from an XFS target).
    """
    cmd = [
        b"rsync",
        b"-aHAXc",
        b"--numeric-ids",
        b"-n",
        b"-i",
        b"--delete",
        *(b"--filter=-x " + name.encode() for name in sorted(_ACL_VIEWS)),
        os.fsencode(src) + b"/",
        os.fsencode(dst) + b"/",
    ]
    with preserving_atimes(src, dst):
        proc = subprocess.run(cmd, capture_output=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(
            f"rsync exited {proc.returncode}: {proc.stderr.decode(errors='replace')}"
        )
    out = proc.stdout.decode(errors="backslashreplace")
    return [line for line in out.splitlines() if line.strip()]


def assert_rsync_clean(src: PathArg, dst: PathArg) -> None:
    """Fail, showing rsync's itemized lines, if rsync sees anything to transfer or delete."""
    lines = rsync_diff(src, dst)
    assert not lines, "rsync sees differences:\n" + "\n".join(lines[:50])


# --- building the hostile tree -------------------------------------------------------------


def _file(
    path: bytes,
    data: bytes = b"",
    mode: int = 0o644,
    owner: tuple[int, int] | None = None,
) -> None:
    """Create a file; chown before chmod because chown clears setuid/setgid."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
        if owner:
            os.fchown(fd, *owner)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def _dir(path: bytes, mode: int = 0o755, owner: tuple[int, int] | None = None) -> None:
    os.mkdir(path, 0o700)
    if owner:
        os.chown(path, *owner)
    os.chmod(path, mode)


def _setxattr(path: bytes, name: bytes, value: bytes) -> None:
    """Set an xattr, skipping only when the filesystem or our privileges refuse it."""
    try:
        os.setxattr(path, name, value)
    except OSError as e:
        if e.errno not in (*_NOT_SUPPORTED, errno.EPERM):
            raise


def _setfacl(*args: bytes) -> None:
    proc = subprocess.run([b"setfacl", *args], capture_output=True, check=False)
    if proc.returncode != 0 and b"not supported" not in proc.stderr:
        raise RuntimeError(f"setfacl {args!r}: {proc.stderr.decode(errors='replace')}")


def _make_files(r: bytes, rng: random.Random) -> None:
    _dir(r + b"/files")
    _file(r + b"/files/empty")
    _file(r + b"/files/small", b"small file\n", 0o640, owner=(1234, 5678))
    _file(r + b"/files/big", rng.randbytes(200 * _KIB + 123), owner=(65000, 65001))
    _setxattr(r + b"/files/small", b"user.binary", bytes(range(256)))
    _setxattr(r + b"/files/small", b"user.empty", b"")
    _setxattr(r + b"/files/big", b"trusted.secret", b"\x00trusted\xff")

    sparse = r + b"/files/sparse"
    _file(sparse)
    fd = os.open(sparse, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.truncate(fd, SPARSE_SIZE)
        for start, end in SPARSE_DATA:
            os.pwrite(fd, rng.randbytes(end - start), start)
        os.fsync(fd)  # ZFS, for one, reports no holes in a file with unwritten data
        got = _data_map(fd, SPARSE_SIZE)
    finally:
        os.close(fd)
    if got not in (SPARSE_DATA, ((0, SPARSE_SIZE),)):  # the latter: no hole support at all
        raise RuntimeError(f"files/sparse has data map {got}, expected {SPARSE_DATA}")

    _file(r + b"/files/acl", b"acl\n", 0o640)
    _setfacl(b"-m", b"u:1234:rw,g:5678:r,u:65000:r", r + b"/files/acl")


def _make_dirs(r: bytes) -> None:
    """Nesting, an empty dir, a read-only dir with files, a dir with a default ACL."""
    deep = r + b"/nest"
    _dir(deep)
    for level, owner in ((1, None), (2, (65000, 65001)), (3, None), (4, (1234, 5678))):
        deep += b"/l%d" % level
        _dir(deep, owner=owner)
    _dir(r + b"/nest/l1/sibling")
    _file(deep + b"/deep-file", b"four levels down\n")
    _setxattr(r + b"/nest", b"user.dir", b"\x00\x01dir\xff")
    _setxattr(r + b"/nest/l1", b"trusted.dir", b"t")
    _dir(r + b"/emptydir")

    _dir(r + b"/acldir")
    _setfacl(b"-d", b"-m", b"u:1234:rwx,g:5678:rx,o::-", r + b"/acldir")
    _setfacl(b"-m", b"u:65000:rx", r + b"/acldir")
    # Created after the default ACL so that they inherit it.
    with open(r + b"/acldir/inherited", "wb") as f:
        f.write(b"inherits the default ACL\n")
    os.mkdir(r + b"/acldir/subdir")

    _dir(r + b"/ro")
    _file(r + b"/ro/inner", b"inside a read-only dir\n", 0o444)


def _make_links(r: bytes) -> None:
    _dir(r + b"/links")
    _file(r + b"/links/a", b"two names, one inode\n")
    os.link(r + b"/links/a", r + b"/links/b")
    _file(r + b"/links/tri-1", b"three names across dirs\n", 0o600, owner=(1234, 5678))
    _setxattr(r + b"/links/tri-1", b"user.linked", b"shared")
    os.link(r + b"/links/tri-1", r + b"/nest/l1/tri-2")
    os.link(r + b"/links/tri-1", r + b"/ro/tri-3")

    _dir(r + b"/syms")
    for name, target in (
        (b"relative", b"../files/small"),
        (b"absolute", b"/etc/passwd"),
        (b"dangling", b"no/such/target"),
        (b"to-dir", b"../nest"),
        (b"bad-bytes", b"target-\xff\xfe-\x01\n"),
        (b"sym \n\xff", b"../names/\xff\xfe"),
    ):
        os.symlink(target, r + b"/syms/" + name)
    os.lchown(r + b"/syms/relative", 1234, 5678)
    os.lchown(r + b"/syms/dangling", 65000, 65001)


def _make_specials(r: bytes) -> None:
    _dir(r + b"/dev")
    os.mkfifo(r + b"/dev/fifo", 0o600)
    os.chmod(r + b"/dev/fifo", 0o620)
    os.mknod(r + b"/dev/null-like", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    os.chown(r + b"/dev/null-like", 1234, 5678)
    os.chmod(r + b"/dev/null-like", 0o666)
    os.mknod(r + b"/dev/loop200", stat.S_IFBLK | 0o600, os.makedev(7, 200))
    os.chmod(r + b"/dev/loop200", 0o660)
    # Bind through the directory's fd: sun_path is limited to 108 bytes, tmp paths are not.
    dirfd = os.open(r + b"/dev", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.bind(f"/proc/self/fd/{dirfd}/socket")
    finally:
        os.close(dirfd)
    os.chmod(r + b"/dev/socket", 0o755)


def _make_perms(r: bytes) -> None:
    _dir(r + b"/perms")
    _file(r + b"/perms/setuid", b"#!/bin/true\n", 0o4755, owner=(1234, 5678))
    _file(r + b"/perms/setgid", b"#!/bin/true\n", 0o2755, owner=(65000, 65001))
    _file(r + b"/perms/none", b"no access\n", 0o000)
    _file(r + b"/perms/all", b"all access\n", 0o777, owner=(0, 0))
    _file(r + b"/perms/rw-r", b"owner rw, group r\n", 0o640)
    _dir(r + b"/perms/sticky", 0o1777)
    _file(r + b"/perms/sticky/tmpfile", b"in a sticky dir\n", 0o666, owner=(1234, 5678))
    _dir(r + b"/perms/setgid-dir", 0o2775, owner=(0, 5678))
    _file(r + b"/perms/setgid-dir/child", b"inherits gid\n")


def _make_names(r: bytes) -> None:
    _dir(r + b"/names")
    for i, name in enumerate(HOSTILE_NAMES):
        _file(r + b"/names/" + name, name + b"\n", 0o600 + i)
    _setxattr(r + b"/names/new\nline", b"user.name\n\xff", b"hostile xattr name")
    hostile_dir = r + b"/names/dir\n\t -*?\xff"
    _dir(hostile_dir, 0o750)
    _file(hostile_dir + b"/-rf", b"not an option\n")


def _set_times(r: bytes) -> None:
    """Distinct nanosecond times on every inode, deepest first and last of all, so that no
    later change (a child created, a mode set) disturbs them.  atime is older than mtime,
    the case where relatime would bump it on any read."""
    stats = _lstat_tree(r)
    seen = set()
    order = sorted(stats, key=lambda rel: (-(rel.count(b"/") + 1 if rel else 0), rel))
    for i, rel in enumerate(order):
        key = (stats[rel].st_dev, stats[rel].st_ino)
        if key in seen:
            continue
        seen.add(key)
        mtime = 1_600_000_000_123_456_789 + i * 3_141_592_653
        atime = mtime - 86_400_271_828_182 - i
        os.utime(_join(r, rel) if rel else r, ns=(atime, mtime), follow_symlinks=False)


def build_hostile_tree(root: PathArg) -> None:
    """Fill the existing, empty directory root with every file type, hostile name and piece
    of metadata a faithful cloner must reproduce.  Needs root (chown, mknod, trusted.*)."""
    r = os.fsencode(root)
    if os.listdir(r):
        raise ValueError(f"{root!r} is not empty")
    rng = random.Random(_SEED)
    _make_files(r, rng)
    _make_dirs(r)
    _make_links(r)
    _make_specials(r)
    _make_perms(r)
    _make_names(r)
    _setxattr(r, b"user.root", b"on the root dir")
    os.chmod(r + b"/ro", 0o555)
    os.chmod(r, 0o755)
    _set_times(r)


def leftovers(root: str | os.PathLike[str]) -> list[str]:
    """fsclone's own names (temp files, hard-link staging) left anywhere below ``root``."""
    found: list[str] = []
    with preserving_atimes(root):
        for _dir, subdirs, files in os.walk(os.fspath(root)):
            found += [n for n in subdirs + files if n.startswith(".fsclone-")]
    return found


def _regular_files(root: Path) -> Iterator[str]:
    """Relative paths of the regular files under root, fsclone's temp names left out."""
    for top, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".fsclone-")]
        for name in names:
            path = Path(top, name)
            if not name.startswith(".fsclone-") and stat.S_ISREG(path.lstat().st_mode):
                yield str(path.relative_to(root))


def _same_bytes(a: Path, b: Path) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(1 << 20), fb.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True


def wrong_under_final_names(src: Path, dst: Path) -> list[str]:
    """Target files that look current (a regular file of the source's size and mtime under
    the same name) and hold other bytes: no later pass without --checksum would mend them.
    Reads the backing trees, never moving an atime."""
    wrong = []
    with preserving_atimes(src, dst):
        for rel in _regular_files(dst):
            try:
                s = (src / rel).lstat()
            except FileNotFoundError:
                continue
            d = (dst / rel).lstat()
            if (stat.S_ISREG(s.st_mode) and (s.st_size, s.st_mtime_ns) == (d.st_size,
                                                                           d.st_mtime_ns)
                    and not _same_bytes(src / rel, dst / rel)):
                wrong.append(rel)
    return wrong


def assert_nothing_wrong_under_final_names(src: Path, dst: Path) -> None:
    wrong = wrong_under_final_names(src, dst)
    assert not wrong, f"published with the source's size and mtime and wrong bytes: {wrong}"


def entries_below(root: Path) -> int:
    """Every entry below ``root`` (not ``root`` itself)."""
    return sum(len(subdirs) + len(files) for _, subdirs, files in os.walk(root))


def subtree(root: Path, dirs: int, files: int) -> int:
    """``root`` with ``dirs`` subdirectories of ``files`` files each; returns the entries a
    removal of ``root`` removes (itself included)."""
    for d in range(dirs):
        (root / f"d{d}").mkdir(parents=True)
        for f in range(files):
            (root / f"d{d}/f{f}").write_text(f"{d}/{f}")
    return 1 + dirs * (files + 1)
