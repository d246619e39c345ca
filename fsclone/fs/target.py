"""One target directory, for one chunk: every change a copy makes to the target.

A new file is written unnamed (``O_TMPFILE``, fs/unnamed.py) or under a temp name in its
directory (fsclone.schema.temp_name), gets its data and metadata, and only then its name:
linked in, or renamed over the old entry. A rename never removes a directory (that is a
deletion, planned and guarded elsewhere): one that appeared at the name makes the publish fail,
and a failed publish discards its temp, so nothing of a failed step stays behind. Hard links go
through the pass's staging directory (fs/staging.py), which is a TargetDir too.

Project IDs and flags (fs.inodeflags) come last, after times; immutable and append-only wait
until a new file has its name. An immutable or append-only target that must change (renamed
over, linked, its metadata mended) is unlocked for the change and locked again.

Every OSError that leaves here is marked with its step and TARGET (fs/steps.py), or SOURCE for
the source reads of a file's copy, so an item error says what failed.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import TYPE_CHECKING

from fsclone.fs import data, dirs, meta
from fsclone.fs.inodeflags import FRESH, LOCKS, NONE, Attrs, Pending, Side
from fsclone.fs.side import DirSide, Xattrs
from fsclone.fs.source import SourceChanged, SourceDir, changed
from fsclone.fs.steps import (
    CREATE,
    DATA,
    LIST,
    OPEN,
    PUBLISH,
    REMOVE,
    SOURCE,
    STAT,
    TARGET,
    mark,
)
from fsclone.fs.unnamed import UnnamedFiles
from fsclone.fsprofile import UNPROBED, FsProfile
from fsclone.schema import temp_name

if TYPE_CHECKING:
    from fsclone.fs.lustre.create import LustreCreate

_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_TEMP_FILE = os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC
_DEFAULT_ACL = "system.posix_acl_default"
#: what a new file without project ID and flags gets from them: no step after its times
_NOTHING: tuple[Pending | None, int] = (None, 0)


def _flush(fd: int) -> None:
    try:
        os.fdatasync(fd)
    except OSError as exc:
        mark(exc, DATA, TARGET)
        raise


class TargetDir(DirSide):
    """A target directory held by its fd (owned by the caller) for one chunk. ``tag`` makes
    this run's temp names its own; ``inherits`` says whether new files get a default ACL
    (:meth:`has_default_acl`), which their metadata then replaces in full; ``flush``: a new
    file's data is flushed before its times are set; ``kernel``: data is copied by
    copy_file_range (both from the target's profile, fsclone.fsprofile); ``layouts``: a Lustre
    target's creates with the source's layout (None: the target's default)."""

    __slots__ = ("_locks", "_plain", "dev", "flush", "inherits", "kernel", "layouts", "pass_id",
                 "tag",
                 "unnamed")
    SIDE = TARGET

    def __init__(self, fd: int, flags: Side, pass_id: str, unnamed: UnnamedFiles, dev: int,
                 tag: str = "", profile: FsProfile = UNPROBED,
                 layouts: LustreCreate | None = None) -> None:
        super().__init__(fd, flags)
        self.pass_id, self.unnamed, self.dev, self.tag = pass_id, unnamed, dev, tag
        #: flush a new file's data before its times are set (a Lustre target)
        self.flush = profile.flush_before_times
        self.kernel = profile.copy_file_range is not False
        self.layouts = layouts
        self.inherits = False
        #: temp name → the immutable or append-only flags its file gets once it has its name
        self._locks: dict[str, int] = {}
        #: whether a new file here has no carried flags (None: not read yet, see :meth:`plain`)
        self._plain: bool | None = None

    # -- reads ----------------------------------------------------------------------------
    def names(self) -> list[str]:
        try:
            return dirs.list_names(self.fd)
        except OSError as exc:
            mark(exc, LIST, TARGET)
            raise

    def has_default_acl(self) -> bool:
        """Whether new entries here inherit a default ACL (unreadable: taken as none)."""
        try:
            return bool(os.getxattr(self.fd, _DEFAULT_ACL))
        except OSError:
            return False

    def temp(self, name: str) -> str:
        """This run's temp name for ``name``."""
        return temp_name(self.pass_id, name, self.tag)

    def plain(self) -> bool:
        """Whether a new file here starts with no project ID and no carried flags: this
        directory has none to give (read once per chunk, so a new file costs no read of its
        own)."""
        if self._plain is None:
            try:
                self._plain = not self.flags.read(self.fd).flags
            except OSError as exc:
                mark(exc, STAT, TARGET)
                raise
        return self._plain

    # -- new files ------------------------------------------------------------------------
    def copy_unnamed(self, src: SourceDir, name: str, st: os.stat_result) -> int | None:
        """Copy the source file ``name`` (listed as ``st``) into an unnamed file, then link it
        in: the cheapest way to a complete new file. Returns the bytes written, or None where
        the filesystem has no unnamed files (then :meth:`copy_to_temp`). A name that appeared
        since the listing is replaced. Raises SourceChanged when the source was written."""
        try:
            fd = self.unnamed.open(self.fd, meta.creation_mode(st))
        except OSError as exc:
            mark(exc, CREATE, TARGET)
            raise
        if fd is None:
            return None
        try:
            written, locks = self._fill(fd, src, name, st, meta.creation_mode(st))
            try:
                self.unnamed.link(fd, self.fd, name)
            except FileExistsError:  # the name appeared since the listing: replace it
                self._link_over(fd, name)
            except OSError as exc:
                mark(exc, PUBLISH, TARGET)
                raise
            if locks:
                self.flags.lock(fd, locks)
        finally:
            os.close(fd)
        return written

    def _link_over(self, fd: int, name: str) -> None:
        """Put the unnamed file ``fd`` in place of the entry ``name``."""
        tmp = self.temp(name)
        try:
            self.unnamed.link(fd, self.fd, tmp)
        except OSError as exc:
            mark(exc, PUBLISH, TARGET)
            raise
        self.publish(tmp, name)

    def copy_to_temp(self, src: SourceDir, name: str, st: os.stat_result,
                     layout: bytes | None = None) -> tuple[str, int]:
        """Copy data and metadata into a new temp file (with the source's Lustre ``layout``,
        see :meth:`create_temp`); returns its name and the bytes written. The temp is removed
        on any failure."""
        tmp = self.temp(name)
        mode = meta.temp_mode(st)
        fd = self.create_temp(tmp, mode, layout)
        try:
            written, locks = self._fill(fd, src, name, st, mode)
        except BaseException:
            os.close(fd)
            self.discard(tmp)
            raise
        os.close(fd)
        if locks:
            self._locks[tmp] = locks
        return tmp, written

    def _fill(self, fd: int, src: SourceDir, name: str, st: os.stat_result,
              made: int) -> tuple[int, int]:
        """Copy the source file's data and metadata into ``fd``, just made with the mode
        ``made``; returns the bytes written and the immutable and
        append-only flags it gets once it has its name. Raises SourceChanged when the
        source was replaced or written since ``st`` was taken: one fstat after the copy proves
        the fd is the listed file, unchanged, so none is needed before it."""
        try:
            sfd = dirs.open_file(name, src.fd)  # not src.open_file: one call fewer a file
        except OSError as exc:
            mark(exc, OPEN, SOURCE)
            raise
        try:
            written = data.copy_whole(sfd, fd, st.st_size, data.is_sparse(st),
                                      (st.st_dev, self.dev), self.kernel)
            try:
                after = os.fstat(sfd)
            except OSError as exc:
                mark(exc, STAT, SOURCE)
                raise
            if changed(st, after):
                raise SourceChanged()
            want = meta.read_xattrs(sfd, side=SOURCE)
            # the mode it was made with, less the umask, tells whether a chmod is still
            # needed, without a stat; under a default ACL (which decides the mode) the
            # inherited ACL is replaced in full, and the mode set
            have = meta.read_xattrs(fd, side=TARGET) if self.inherits else {}
            current = None if self.inherits else meta.as_created(made)
            carry = src.flags
            then, locks = self._carried(fd, carry, sfd) if carry.flags or carry.projids \
                else _NOTHING
            if self.flush:
                _flush(fd)
            meta.apply_all(fd, st, want, have, current=current, then=then)
        finally:
            os.close(sfd)
        return written, locks

    def _carried(self, fd: int, carry: Side, sfd: int) -> tuple[Pending | None, int]:
        """The project ID and flags the new file ``fd`` is to get from the source file
        ``sfd`` (``carry``: the source's Side), None for nothing (which it has already), and
        the flags that wait for its name. One ioctl on the path of every new file, where
        project IDs are not carried (tmpfs)."""
        flags = self.flags
        want = carry.read_new(sfd)
        plain = self._plain
        if plain is None:
            plain = self.plain()
        if want is None:
            if plain:
                return _NOTHING
            want = carry.zero()
        locks = want.flags if want.flags and want.flags & LOCKS else 0
        return Pending(fd, want, flags, False, FRESH if plain else NONE), locks

    def create_temp(self, tmp: str, mode: int = 0o600, layout: bytes | None = None) -> int:
        """A new, empty temp file, for writing; only its owner may write it (``mode``: see
        meta.temp_mode). With a source's Lustre ``layout`` (given only where :attr:`layouts`
        is set), made with it before any data (fs.lustre.create)."""
        try:
            if layout is not None and self.layouts is not None:
                return self.layouts.create(self.fd, tmp, mode, layout)
            return os.open(tmp, _NEW_FILE, mode, dir_fd=self.fd)
        except OSError as exc:
            mark(exc, CREATE, TARGET)
            raise

    def open_temp(self, tmp: str) -> int:
        """A temp file of ours, opened for writing."""
        try:
            return os.open(tmp, _TEMP_FILE, dir_fd=self.fd)
        except OSError as exc:
            mark(exc, OPEN, TARGET)
            raise

    def publish_stamped(self, tmp: str, name: str, st: os.stat_result, want: Xattrs,
                        attrs: Attrs) -> None:
        """Give the complete temp file ``tmp`` the metadata of ``st`` (xattrs ``want``, project
        ID and flags ``attrs``), then rename it over ``name``, then lock it (immutable,
        append-only) through the fd held on it; the temp is discarded on any failure."""
        try:
            fd = self.open_temp(tmp)
        except BaseException:
            self.discard(tmp)
            raise
        try:
            try:
                if self.flush:  # every range's writes, through the fds of several workers
                    _flush(fd)
                meta.apply_all(fd, st, want, meta.read_xattrs(fd, side=TARGET),
                               then=Pending(fd, attrs, self.flags, False))
            except BaseException:
                self.discard(tmp)
                raise
            self.publish(tmp, name)
            self.flags.lock(fd, attrs.flags)
        finally:
            os.close(fd)

    # -- other new entries ----------------------------------------------------------------
    def mkdir(self, name: str) -> None:
        """A new directory, private until its own metadata is applied after its entries."""
        try:
            os.mkdir(name, 0o700, dir_fd=self.fd)
        except OSError as exc:
            mark(exc, CREATE, TARGET)
            raise

    def symlink(self, name: str, points_to: str, st: os.stat_result, want: Xattrs) -> None:
        """A symlink to ``points_to`` with the metadata of ``st``, in place of ``name``."""
        tmp = self.temp(name)
        try:
            os.symlink(points_to, tmp, dir_fd=self.fd)
        except OSError as exc:
            mark(exc, CREATE, TARGET)
            raise
        self._place(tmp, name, st, want)

    def mknod(self, name: str, st: os.stat_result, want: Xattrs) -> None:
        """A fifo, socket or device node like ``st``, in place of ``name``: made, never
        opened."""
        tmp = self.temp(name)
        try:
            os.mknod(tmp, stat.S_IFMT(st.st_mode) | 0o600, st.st_rdev, dir_fd=self.fd)
        except OSError as exc:
            mark(exc, CREATE, TARGET)
            raise
        self._place(tmp, name, st, want)

    def _place(self, tmp: str, name: str, st: os.stat_result, want: Xattrs) -> None:
        """Metadata onto a new non-regular temp entry, then rename it into place."""
        try:
            self.mend(tmp, st, want, {}, None)
        except BaseException:
            self.discard(tmp)
            raise
        self.publish(tmp, name)  # which discards the temp if it cannot

    # -- names ----------------------------------------------------------------------------
    def publish(self, tmp: str, name: str) -> None:
        """Rename a finished temp over ``name``, which replaces anything but a directory (a
        non-directory of another type included). A directory is never removed here: one that
        appeared since the listing makes the rename fail, and the temp is discarded. An
        immutable or append-only ``name`` refuses to be renamed over: its flags are cleared
        for the rename and put back on the old inode (other names may hold it). A temp whose
        file is to be immutable or append-only is locked once renamed, through an fd opened
        on it before."""
        locks = self._locks.pop(tmp, 0) if self._locks else 0
        fd = -1
        try:
            if locks:
                fd = self.open_temp(tmp)
            self._rename(tmp, name)
        except BaseException as exc:
            if fd >= 0:
                os.close(fd)
            self.unpublished(tmp, exc)
            raise
        if fd >= 0:
            try:
                self.flags.lock(fd, locks)
            finally:
                os.close(fd)

    def _rename(self, tmp: str, name: str) -> None:
        try:
            os.rename(tmp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        except PermissionError as exc:
            if exc.errno != errno.EPERM:
                raise
            with self.flags.unlocked_at(name, self.fd):
                os.rename(tmp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)

    def unpublished(self, tmp: str, exc: BaseException) -> None:
        """``tmp`` could not be published (``exc``): it goes."""
        self.discard(tmp)
        if isinstance(exc, OSError):
            mark(exc, PUBLISH, TARGET)

    def discard(self, tmp: str) -> None:
        """Remove a temp entry of ours, if it is there."""
        if self._locks:
            self._locks.pop(tmp, None)
        try:
            os.unlink(tmp, dir_fd=self.fd)
        except FileNotFoundError:
            pass
        except OSError as exc:
            mark(exc, REMOVE, TARGET)
            raise

    # -- metadata -------------------------------------------------------------------------
    def mend(self, name: str, st: os.stat_result, want: Xattrs, have: Xattrs,
             compared: os.stat_result | None, attrs: Attrs | None = None,
             known: Attrs = NONE) -> None:
        """Make the metadata of the entry ``name`` those of ``st`` in place, in fs.meta's
        fixed order, on the inode ``compared`` (its lstat; None: an entry just made here)
        only: see meta.apply_at, which marks its errors. With ``attrs`` (the source's project
        ID and flags, for a regular file), through a descriptor opened for the ioctls: an
        immutable or append-only target is unlocked, mended, and given ``attrs`` last.
        ``known``: the target's own, as read after ``compared`` was taken; trusted only while
        the inode's ctime is still that of ``compared`` (Side.changing)."""
        if attrs is None:
            meta.apply_at(name, self.fd, st, want, have, compared)
            return
        assert compared is not None  # only entries compared carry flags
        fd, now = self.open_checked(name, compared)
        if now.st_ctime_ns != compared.st_ctime_ns:
            known = NONE
        try:
            with self.flags.changing(fd, attrs, known) as then:
                meta.apply_all(fd, st, want, have, current=now, then=then)
        finally:
            os.close(fd)

    def open_up(self) -> bool:
        """Let entries of this directory change: a non-root pass's own read-only directory
        is made writable (dirs.make_writable), an immutable or append-only one loses those
        flags. Its metadata, applied after its entries, restores both. Returns whether
        anything changed."""
        if dirs.make_writable(self.fd):
            return True
        try:
            return bool(self.flags.unlock(self.fd) & LOCKS)
        except OSError as exc:
            mark(exc, STAT, TARGET)
            raise
