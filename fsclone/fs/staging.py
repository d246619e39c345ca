"""Hard links through the pass's staging directory at the target root: the first copy of a
source inode is published there as a link named after the source (dev, ino), every other name
of it is linked from there, and an up-to-date target file is claimed for its source inode.
``link()`` failing with EEXIST is the arbiter between workers (fsclone.ops.links)."""

from __future__ import annotations

import contextlib
import errno
import os

from fsclone.fs import dirs
from fsclone.fs.steps import CREATE, PUBLISH, TARGET, mark
from fsclone.fs.target import TargetDir


def open_staging(root_fd: int, name: str) -> int:
    """The hard-link staging directory ``name`` at the target root, made if missing."""
    try:
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, 0o700, dir_fd=root_fd)
        return dirs.open_dir(name, root_fd)
    except OSError as exc:
        mark(exc, CREATE, TARGET)
        raise


def publish_linked(tgt: TargetDir, tmp: str, staging: TargetDir, key: str, name: str) -> bool:
    """Publish the complete temp file ``tmp`` as the copy of source inode ``key`` (a link
    in ``staging``), then under ``name``. False when another worker published that inode
    first (``link`` failing with EEXIST is the arbiter): the temp is discarded, and the
    caller links ``name`` from staging instead."""
    try:
        os.link(tmp, key, src_dir_fd=tgt.fd, dst_dir_fd=staging.fd, follow_symlinks=False)
    except FileExistsError:
        tgt.discard(tmp)
        return False
    except BaseException as exc:
        tgt.unpublished(tmp, exc)
        raise
    tgt.publish(tmp, name)
    return True


def link_from(tgt: TargetDir, staging: TargetDir, key: str, name: str) -> None:
    """Give ``name`` the inode ``key`` of ``staging`` (linked to a temp name, which is
    renamed over ``name``)."""
    try:
        _link_from(tgt, staging, key, name)
    except PermissionError as exc:  # an immutable or append-only inode takes no new name
        if exc.errno != errno.EPERM:
            raise
        with staging.flags.unlocked_at(key, staging.fd):
            _link_from(tgt, staging, key, name)


def _link_from(tgt: TargetDir, staging: TargetDir, key: str, name: str) -> None:
    tmp = tgt.temp(name)
    try:
        os.link(key, tmp, src_dir_fd=staging.fd, dst_dir_fd=tgt.fd, follow_symlinks=False)
    except OSError as exc:
        mark(exc, PUBLISH, TARGET)
        raise
    tgt.publish(tmp, name)


def claim(tgt: TargetDir, name: str, staging: TargetDir, key: str,
          current: os.stat_result) -> bool:
    """Publish the up-to-date file ``name`` (lstat ``current``) as the copy of source inode
    ``key``, unless that target inode already stands for another source inode (links split
    in the source since the last pass): a second staging entry, named after the target
    inode, says which source inode it stands for."""
    owner = f"i{current.st_dev:x}-{current.st_ino:x}"
    try:
        os.symlink(key, owner, dir_fd=staging.fd)
    except FileExistsError:
        if staging.readlink(owner) != key:
            return False
    except OSError as exc:
        mark(exc, CREATE, TARGET)
        raise
    try:
        try:
            os.link(name, key, src_dir_fd=tgt.fd, dst_dir_fd=staging.fd,
                    follow_symlinks=False)
        except PermissionError as exc:  # an immutable or append-only inode: no new name
            if exc.errno != errno.EPERM:
                raise
            with tgt.flags.unlocked_at(name, tgt.fd):
                os.link(name, key, src_dir_fd=tgt.fd, dst_dir_fd=staging.fd,
                        follow_symlinks=False)
    except FileExistsError:
        return False
    except OSError as exc:
        mark(exc, PUBLISH, TARGET)
        raise
    return True
