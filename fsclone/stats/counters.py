"""Counter names and merge-by-addition. Counters are plain ``dict[str, int]`` so they cross any
transport as JSON and add up exactly, whatever the order results arrive in."""

from __future__ import annotations

from collections.abc import Mapping

SCANNED = "scanned"  # entries looked at (source side)
COPIED = "files_copied"  # regular files whose data was written
BYTES = "bytes_copied"
UPDATED = "updated"  # metadata fixed in place, no data written
CREATED = "created"  # directories, symlinks, specials, hard links made
SAME = "unchanged"
SKIP_NEWER = "skipped_newer"
SKIP_OLDER = "skipped_older"
SKIP_EXCLUDED = "skipped_excluded"
SKIP_MOUNTS = "skipped_mounts"  # source directories on another filesystem (--one-file-system)
#: a Lustre source's HSM-released files left unread (``--released skip``), listed in the pass's
#: state directory
RELEASED = "skipped_released"
#: + a layout kind (fsclone.fs.lustre.layout.kind): new files and directories left with the
#: target's default layout, as the target refused theirs or it could not be re-used
LAYOUT_DEFAULT = "layout_default_"
CHANGED = "changed_during_copy"
#: entries whose times the target filesystem cannot hold (kept at its limit; not a change)
TIMES_CLAMPED = "times_beyond_target"
DELETED = "deleted"
#: files a sync renamed in the target as the source did, not copied anew (fsclone.ops.moves)
MOVED = "moved"
PLANNED_DELETES = "delete_planned"
TYPE_CHANGED = "type_changed"  # a directory now a non-directory or the reverse (a copy leaves it)
ERRORS = "errors"
CHUNKS = "chunks_done"
HASHED = "bytes_hashed"
VERIFIED = "files_verified"
MISMATCHES = "mismatches"
# what a scan pass counts (``fsclone scan``), besides SCANNED
FILES = "files"
DIRS = "dirs"
SYMLINKS = "symlinks"
OTHERS = "others"  # fifos, sockets, devices
SIZE = "bytes"  # apparent size of the regular files, once per name
HARDLINKS = "hardlinks"  # regular files with more than one name
HIST_PREFIX = "size_log2_"  # + k: regular files whose size has bit length k (0 B is k=0)


def size_bucket(size: int) -> str:
    """The histogram counter for a file of ``size`` bytes: k = bit length, so bucket k holds
    sizes in [2**(k-1), 2**k), like dwalk's power-of-2 histogram."""
    return f"{HIST_PREFIX}{size.bit_length():02d}"


def add(total: dict[str, int], delta: Mapping[str, int]) -> dict[str, int]:
    """Add ``delta`` into ``total`` in place and return it."""
    for key, value in delta.items():
        total[key] = total.get(key, 0) + value
    return total
