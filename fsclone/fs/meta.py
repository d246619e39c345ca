"""Reading, comparing and applying metadata: owner, mode, ACLs and xattrs, ns times.

Order of application matters: owner first (chown clears set-id bits), then mode, then xattrs
(POSIX ACLs are the ``system.posix_acl_*`` xattrs, and setting the access ACL after chmod keeps
the ACL mask), then times (every other change moves ctime, not mtime, but times must be the
final word), then project ID and flags (fs.inodeflags, the caller's ``then``): immutable and
append-only forbid every change after them.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass

from fsclone.fs import steps, threadcwd
from fsclone.fs.lease import LEASE_XATTR
from fsclone.fs.xattrnames import is_internal

_EUID = os.geteuid()
IS_ROOT = _EUID == 0
#: the xattr the kernel drops on every chown
_CAPS = "security.capability"
#: xattr errors meaning "this filesystem or object has none": not an item failure
_NO_XATTR = {errno.ENOTSUP, errno.ENODATA}
#: what metadata is applied to: an open fd, or the ``/proc/self/fd`` path of an O_PATH
#: descriptor (see :func:`apply_at`), which names the inode itself, never a name in a directory
Target = int | str
#: an entry opened for its metadata alone: never follows a symlink, never opens a device
_ENTRY_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


class EntryChanged(OSError):
    """The entry found under a name is not the one compared (a user swapped it in, a symlink
    to a file outside the target, say): nothing is changed, and the item is listed."""

    def __init__(self, name: str) -> None:
        super().__init__(errno.ESTALE, "changed while being updated", name)


def read_xattrs(target: int | str, dir_fd: int | None = None, *, side: str) -> dict[str, bytes]:
    """All xattrs of an fd, or of a name under ``dir_fd`` (never following symlinks), of the
    ``side`` (steps.SOURCE or steps.TARGET) an error is marked with."""
    if isinstance(target, int):
        return _read_xattrs(target, True, side)
    assert dir_fd is not None
    return _read_xattrs(threadcwd.names_in(dir_fd) + target, False, side)


def read_xattrs_of(names: list[str], dir_fd: int, *, side: str
                   ) -> list[dict[str, bytes] | OSError]:
    """The xattrs of many names in one directory, for one step into it (see fs.threadcwd)
    instead of one per name. A name whose xattrs cannot be read gets its OSError, marked,
    for the caller to list."""
    prefix = threadcwd.names_in(dir_fd)
    out: list[dict[str, bytes] | OSError] = []
    for name in names:
        try:
            out.append(_read_xattrs(prefix + name, False, side))
        except OSError as exc:
            out.append(exc)
    return out


def _read_xattrs(path: int | str, follow: bool, side: str) -> dict[str, bytes]:
    """The xattrs fsclone compares and carries: Lustre's internal ones and fsclone's own lease
    on a target root are left out on both sides (never read, copied, or removed)."""
    try:
        names = os.listxattr(path, follow_symlinks=follow)
    except OSError as exc:
        if exc.errno in _NO_XATTR:
            return {}
        steps.mark(exc, steps.XATTR, side)
        raise
    values: dict[str, bytes] = {}
    for name in names:
        if is_internal(name) or name == LEASE_XATTR:
            continue
        try:
            values[name] = os.getxattr(path, name, follow_symlinks=follow)
        except OSError as exc:
            if exc.errno not in _NO_XATTR:
                steps.mark(exc, steps.XATTR, side)
                raise
    return values


def creation_mode(st: os.stat_result) -> int:
    """The mode to create a copy of ``st`` with: its permission bits (set-id and sticky bits
    wait for chmod, after chown)."""
    return stat.S_IMODE(st.st_mode) & 0o777


def temp_mode(st: os.stat_result) -> int:
    """The mode to create a copy of ``st`` under a temp name with (a name others can open,
    unlike an unnamed file): its permission bits less group and other write. Until its
    owner is set, nobody but its creator may write it; the other bits let no one read more
    than the finished copy will, and spare a chmod after it in most cases."""
    return creation_mode(st) & ~(stat.S_IWGRP | stat.S_IWOTH)


def _read_umask() -> int:
    """This process's umask, read without setting it (os.umask sets it, for every thread)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: fsclone never changes it (see docs/security.md), so it is read once
UMASK = _read_umask()


def as_created(mode: int) -> os.stat_result:
    """What a regular file this process just created with ``mode``, in a directory without a
    default ACL, is known to hold without a stat (a round trip on a network filesystem): that
    mode less the umask. Its owner is not known (setgid directories, ``grpid`` mounts), and
    -1 is never the source's: root gives it its owner. Only those fields count."""
    return os.stat_result((stat.S_IFREG | (mode & ~UMASK), 0, 0, 1, -1, -1, 0, 0, 0, 0))


def apply_owner(target: Target, st: os.stat_result,
                current: os.stat_result | None = None) -> bool:
    """chown, numeric, unless ``current`` (the target's stat) shows the owner right already;
    only root can give files away, so others keep their own ids. Returns whether it chowned."""
    if not IS_ROOT or (current is not None
                       and (current.st_uid, current.st_gid) == (st.st_uid, st.st_gid)):
        return False
    try:
        os.chown(target, st.st_uid, st.st_gid)
    except OSError as exc:
        steps.mark(exc, steps.OWNER, steps.TARGET)
        raise
    return True


def apply_mode(target: Target, st: os.stat_result, current: os.stat_result | None = None) -> None:
    """chmod, unless ``current`` (the target's stat) shows the mode right already."""
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISLNK(st.st_mode) or (current is not None and stat.S_IMODE(current.st_mode) == mode):
        return  # Linux symlinks have no mode of their own
    try:
        os.chmod(target, mode)
    except OSError as exc:
        steps.mark(exc, steps.MODE, steps.TARGET)
        raise


def apply_xattrs(target: Target, want: dict[str, bytes], have: dict[str, bytes]) -> None:
    """Make the target's xattrs equal ``want``, touching only those that differ."""
    try:
        for name in have.keys() - want.keys():
            os.removexattr(target, name)
        for name, value in want.items():
            if have.get(name) != value:
                os.setxattr(target, name, value)
    except OSError as exc:
        steps.mark(exc, steps.XATTR, steps.TARGET)
        raise


def apply_times(target: Target, st: os.stat_result) -> None:
    try:
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    except OSError as exc:
        steps.mark(exc, steps.TIMES, steps.TARGET)
        raise


def apply_all(target: Target, st: os.stat_result, want: dict[str, bytes],
              have: dict[str, bytes], current: os.stat_result | None = None,
              then: Callable[[], None] | None = None) -> None:
    """Owner → mode → ACLs/xattrs → times → ``then`` (project ID → flags: an
    inodeflags.Pending), as the module docstring explains. With ``current``,
    the target's stat, owner and mode are set only where they differ. A chown clears set-id
    bits and the kernel drops ``security.capability`` with it (and nothing else), so after
    one a mode that has them is set again, and the caps are taken as gone."""
    if apply_owner(target, st, current):
        if st.st_mode & (stat.S_ISUID | stat.S_ISGID):
            current = None
        if _CAPS in have:
            have = {k: v for k, v in have.items() if k != _CAPS}
    apply_mode(target, st, current)
    if want or have:
        apply_xattrs(target, want, have)
    apply_times(target, st)
    if then is not None:
        then()


def apply_at(name: str, dir_fd: int, st: os.stat_result, want: dict[str, bytes],
             have: dict[str, bytes], compared: os.stat_result | None) -> None:
    """:func:`apply_all` to the entry ``name`` below ``dir_fd``, through a descriptor of the
    entry itself (O_PATH | O_NOFOLLOW, and its ``/proc/self/fd`` path for the calls that
    refuse such a descriptor): chmod by name follows a symlink a user swapped in, a path from
    the descriptor never does. ``compared`` is the target's lstat the change was decided on:
    the entry must still be that inode, of that type (its owner and mode are then set only
    where they differ). None: an entry this worker has just made (a temp symlink or node),
    which must still be of the source's type and ours. Otherwise :class:`EntryChanged`, and
    nothing is done. The entry's open, stat and identity are this step's STAT on the target
    (apply_all marks its own steps first)."""
    try:
        fd = os.open(name, _ENTRY_FLAGS, dir_fd=dir_fd)
        try:
            now = os.fstat(fd)
            if compared is not None:  # with its type: a freed inode number is soon reused
                same = ((now.st_dev, now.st_ino, stat.S_IFMT(now.st_mode))
                        == (compared.st_dev, compared.st_ino, stat.S_IFMT(compared.st_mode)))
            else:
                same = (stat.S_IFMT(now.st_mode) == stat.S_IFMT(st.st_mode)
                        and now.st_uid == _EUID and now.st_nlink == 1)
            if not same:
                raise EntryChanged(name)
            apply_all(f"/proc/self/fd/{fd}", st, want, have, current=now)
        finally:
            os.close(fd)
    except OSError as exc:
        steps.mark(exc, steps.STAT, steps.TARGET)
        raise


@dataclass(frozen=True)
class MetaDiff:
    """Which metadata of a target differ from the source's."""

    owner: bool = False
    mode: bool = False
    xattrs: bool = False
    times: bool = False

    def __bool__(self) -> bool:
        return self.owner or self.mode or self.xattrs or self.times

    def names(self) -> list[str]:
        return [n for n in ("owner", "mode", "xattrs", "times") if getattr(self, n)]


#: beyond any time a filesystem holds: the bounds of a target that showed no limit
_NO_LIMIT = 1 << 128


@dataclass(frozen=True)
class TimeRule:
    """When a target time counts as the source's: within ``window_ns`` (``--modify-window``),
    after the source time is brought into what the target filesystem keeps (``low_ns`` ..
    ``high_ns``, in steps of ``step_ns``, found by a probe). A year-2300 mtime on a filesystem
    that stops in 2038, or a nanosecond mtime on one that keeps whole seconds, is stored as the
    nearest time it can hold, and must not be taken for a change on every pass."""

    window_ns: int = 0
    low_ns: int = -_NO_LIMIT
    high_ns: int = _NO_LIMIT
    step_ns: int = 1

    @classmethod
    def of(cls, window_ns: int, low_ns: int | None, high_ns: int | None,
           step_ns: int = 1) -> TimeRule:
        """The rule for a probe's findings (None: no limit seen)."""
        return cls(window_ns, -_NO_LIMIT if low_ns is None else low_ns,
                   _NO_LIMIT if high_ns is None else high_ns, step_ns)

    def fit(self, ns: int) -> int:
        """``ns`` as the target would store it (the kernel truncates to its step)."""
        return min(max(ns - ns % self.step_ns, self.low_ns), self.high_ns)

    def same(self, src_ns: int, dst_ns: int) -> bool:
        return src_ns == dst_ns or abs(self.fit(src_ns) - dst_ns) <= self.window_ns

    def holds(self, st: os.stat_result) -> bool:
        """Whether the target can hold ``st``'s atime and mtime as they are (on the path of
        every entry: comparisons only)."""
        low, high = self.low_ns, self.high_ns
        return low <= st.st_mtime_ns <= high and low <= st.st_atime_ns <= high


#: how much older than its copy's a source inode's ctime must be for the source to count as
#: unchanged since the copy: more than the time between the copy's reading of the source and
#: its last change to the target (a change the source had in between would otherwise hide),
#: and than the clock skew between the two sides' servers
UNTOUCHED_NS = 10**9


def untouched(src: os.stat_result, dst: os.stat_result) -> bool:
    """Whether the source inode (lstat ``src``) has not changed since its copy ``dst`` was
    made or mended: every change of its xattrs, ACLs, owner, mode, project ID or flags moves
    its ctime, and a copy's is the time of fsclone's last change to it. A target changed
    alone after its copy (or made by another tool, whose copies are newer than their
    sources) is not told by this: ``--checksum`` compares all (docs/design.md)."""
    return src.st_ctime_ns + UNTOUCHED_NS < dst.st_ctime_ns


def inode_same(src: os.stat_result, dst: os.stat_result, times: TimeRule,
               check_owner: bool = IS_ROOT) -> bool:
    """The fast check of the no-change path: what :func:`inode_diff` tells, without building
    a diff."""
    return (((src.st_mtime_ns == dst.st_mtime_ns and src.st_atime_ns == dst.st_atime_ns)
             or (times.same(src.st_mtime_ns, dst.st_mtime_ns)
             and times.same(src.st_atime_ns, dst.st_atime_ns)))
            and (src.st_mode == dst.st_mode or stat.S_ISLNK(src.st_mode))
            and (not check_owner or (src.st_uid, src.st_gid) == (dst.st_uid, dst.st_gid)))


def inode_diff(src: os.stat_result, dst: os.stat_result, times: TimeRule,
               check_owner: bool = IS_ROOT) -> MetaDiff:
    """Compare what lstat tells (no xattrs). Symlink modes are not compared (always 0777)."""
    return MetaDiff(
        owner=check_owner and (src.st_uid != dst.st_uid or src.st_gid != dst.st_gid),
        mode=not stat.S_ISLNK(src.st_mode) and src.st_mode != dst.st_mode,
        times=not (times.same(src.st_mtime_ns, dst.st_mtime_ns)
                   and times.same(src.st_atime_ns, dst.st_atime_ns)),
    )


def with_xattrs(diff: MetaDiff, src_x: dict[str, bytes], dst_x: dict[str, bytes]) -> MetaDiff:
    return MetaDiff(owner=diff.owner, mode=diff.mode, xattrs=src_x != dst_x, times=diff.times)
