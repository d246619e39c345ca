"""Moving and hashing file content. Data is copied in the kernel (copy_file_range) and holes are
kept: only the data segments SEEK_DATA/SEEK_HOLE report are copied, the rest stays a hole.
A copy's errors are marked with the step and side they came from (fs/steps.py); those of the
kernel's copy, which reads one side and writes the other, name the target only for errors
only a target can give (a full disk, say)."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator

import xxhash

from fsclone.fs.steps import DATA, READ, SOURCE, TARGET, mark

_STEP = 1 << 30  # bytes per copy_file_range call: large, so a big file costs few syscalls
_HASH_BUF = 256 << 10  # hashed while still in L2: faster than larger reads
_NO_CFR = {errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP}
#: (source device, target device) pairs whose copy_file_range refused for the pair itself, not
#: for one file (EINVAL can be either): this process copies between them in user space. Learnt
#: at the first refusal, so a cross-filesystem migration pays one failed call, not one per file.
_REFUSED: set[tuple[int, int]] = set()
Devices = tuple[int, int] | None  # (source st_dev, target st_dev), None: nothing to learn
#: copy_file_range errors that only the target side can give
_TARGET_ONLY = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


def data_segments(fd: int, start: int, end: int) -> Iterator[tuple[int, int]]:
    """(offset, end) of the data in [start, end); a filesystem without SEEK_DATA gives one
    segment covering it all."""
    pos = start
    while pos < end:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole up to EOF
                return
            if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                yield pos, end
                return
            mark(exc, READ, SOURCE)
            raise
        if data >= end:
            return
        try:
            hole = min(os.lseek(fd, data, os.SEEK_HOLE), end)
        except OSError as exc:
            mark(exc, READ, SOURCE)
            raise
        yield data, hole
        pos = hole


def _copy_span(src: int, dst: int, offset: int, end: int, devices: Devices,
               kernel: bool) -> int:
    """Copy [offset, end) at the same offsets, in the kernel unless not ``kernel`` (the
    target's profile says it has no copy_file_range, or the site says not to use it) or the
    pair refused it; returns bytes copied (short if the source shrank)."""
    copied = 0
    kernel = kernel and devices not in _REFUSED
    while offset < end:
        if kernel:
            try:
                n = os.copy_file_range(src, dst, min(_STEP, end - offset), offset, offset)
            except OSError as exc:
                if exc.errno not in _NO_CFR:
                    mark(exc, DATA, TARGET if exc.errno in _TARGET_ONLY else "")
                    raise
                kernel = False
                if devices is not None and exc.errno != errno.EINVAL:
                    _REFUSED.add(devices)
        if not kernel:
            n = _copy_userspace(src, dst, offset, end)
        if n == 0:
            break
        offset += n
        copied += n
    return copied


def _copy_userspace(src: int, dst: int, offset: int, end: int) -> int:
    """Fallback for filesystem pairs copy_file_range refuses."""
    try:
        data = os.pread(src, min(_HASH_BUF * 8, end - offset), offset)
    except OSError as exc:
        mark(exc, READ, SOURCE)
        raise
    if data:
        try:
            os.pwrite(dst, data, offset)
        except OSError as exc:
            mark(exc, DATA, TARGET)
            raise
    return len(data)


def copy_range(src: int, dst: int, start: int, end: int, sparse: bool,
               devices: Devices = None, kernel: bool = True) -> int:
    """Copy bytes [start, end) of ``src`` into ``dst`` at the same offsets (``kernel``: see
    _copy_span). The caller sizes ``dst`` (ftruncate) so holes need no writing. Returns bytes
    written."""
    if not sparse:
        return _copy_span(src, dst, start, end, devices, kernel)
    return sum(_copy_span(src, dst, a, b, devices, kernel)
               for a, b in data_segments(src, start, end))


def copy_whole(src: int, dst: int, size: int, sparse: bool, devices: Devices = None,
               kernel: bool = True) -> int:
    """Copy a whole file of ``size`` bytes; a trailing hole is made by ftruncate."""
    written = copy_range(src, dst, 0, size, sparse, devices, kernel)
    if sparse:
        try:
            os.ftruncate(dst, size)
        except OSError as exc:
            mark(exc, DATA, TARGET)
            raise
    return written


def is_sparse(st: os.stat_result) -> bool:
    """A file with fewer allocated blocks than its size has holes worth looking for."""
    return st.st_blocks * 512 < st.st_size


def hash_range(fd: int, start: int, end: int) -> tuple[bytes, int]:
    """xxh3-128 of bytes [start, end); returns the digest and bytes read."""
    if end - start <= _HASH_BUF:  # one read, no buffer to zero: what counts with small files
        data = os.pread(fd, max(0, end - start), start)
        if len(data) in (0, end - start):
            return xxhash.xxh3_128_digest(data), len(data)
    h = xxhash.xxh3_128()
    buf = bytearray(min(_HASH_BUF, end - start))
    view = memoryview(buf)
    pos = start
    while pos < end:
        n = os.preadv(fd, [view[: min(_HASH_BUF, end - pos)]], pos)
        if n == 0:
            break
        h.update(view[:n])
        pos += n
    return h.digest(), pos - start
