"""Lustre file layouts, the value of the ``lustre.lov`` xattr: decode, sanitize for re-use on
another filesystem, encode.

A layout is in the byte order of the client that read it (``lov_user_md`` is host-endian):
little-endian on x86_64. Decode and encode both use this host's order, as the worker that reads
a source layout is the one that sets it on the target; a blob in the other order is refused,
not guessed at.

Formats (lustre_user.h, unchanged from 2.12 to 2.17):

- ``lov_user_md_v1``: magic, pattern, object id (16 bytes), stripe size, stripe count, stripe
  offset (32 bytes), then one 24-byte object per instantiated stripe. ``_v3`` puts a 16-byte
  pool name before the objects; SPECIFIC is v3 whose objects are the OSTs asked for.
- ``lov_comp_md_v1`` (PFL, FLR, DoM): a 32-byte header, one 48-byte entry per component
  (extent, and where in the blob its v1/v3 layout lies), then those layouts.
- FOREIGN: a 16-byte header and an opaque value naming storage outside Lustre.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace

from fsclone.errors import LayoutError

#: the xattr a Lustre client shows a file's layout (a directory's default) as
LAYOUT_XATTR = "lustre.lov"
MAGIC_V1 = 0x0BD10BD0
MAGIC_V3 = 0x0BD30BD0
MAGIC_SPECIFIC = 0x0BD50BD0
MAGIC_COMP_V1 = 0x0BD60BD0
MAGIC_FOREIGN = 0x0BD70BD0
_PLAIN = frozenset({MAGIC_V1, MAGIC_V3, MAGIC_SPECIFIC})
_KNOWN = _PLAIN | {MAGIC_COMP_V1, MAGIC_FOREIGN}

PATTERN_RAID0 = 0x1
PATTERN_MDT = 0x100  # Data-on-MDT
PATTERN_OVERSTRIPING = 0x200
PATTERN_F_HOLE = 0x40000000  # an object was lost: the server refuses it in a new layout
PATTERN_F_RELEASED = 0x80000000  # HSM: the data is on tape only
OFFSET_ANY = 0xFFFF  # stripe offset: let the MDS choose the first OST
EXTENT_EOF = 2**64 - 1  # a component's extent end: to the end of the file

COMP_FL_STALE = 0x1  # FLR: this mirror's data is stale
COMP_FL_INIT = 0x10  # the component has objects
#: component flags that tell the source's state, not what was asked for
_COMP_STATE = COMP_FL_STALE | COMP_FL_INIT
_FLR_STATE = 0x3  # header flags: the FLR file state (read-only, write or sync pending)

_HEAD = struct.Struct("=IIQQIHH")  # magic pattern oi_id oi_seq stripe_size count offset
_POOL = 16  # char pool_name[16], NUL-terminated
_OBJECT = struct.Struct("=QQII")  # oi_id oi_seq ost_gen ost_idx
_COMP = struct.Struct("=IIIHHH14s")  # magic size layout_gen flags entry_count mirror_count
_ENTRY = struct.Struct("=IIQQIIIQ4s")  # id flags start end offset size layout_gen timestamp
_FOREIGN = struct.Struct("=IIII")  # magic length type flags


@dataclass(frozen=True)
class Stripe:
    """One stripe's object (``lov_user_ost_data_v1``); in SPECIFIC, the OST asked for."""

    object_id: int
    object_seq: int
    ost_gen: int
    ost_index: int


@dataclass(frozen=True)
class Plain:
    """A v1, v3 or SPECIFIC layout, alone or as one component of a composite one.
    ``stripe_offset`` holds the layout generation when read back from a file."""

    magic: int
    pattern: int
    stripe_size: int
    stripe_count: int
    stripe_offset: int = OFFSET_ANY
    pool: str = ""  # v3 and SPECIFIC only; "" is none
    object_id: int = 0  # the MDT inode's id: server state
    object_seq: int = 0
    objects: tuple[Stripe, ...] = ()

    @property
    def released(self) -> bool:
        return bool(self.pattern & PATTERN_F_RELEASED)


@dataclass(frozen=True)
class Component:
    """One entry of a composite layout: the extent [start, end) of the file it holds."""

    id: int  # bits 16-30 are the FLR mirror id: kept
    flags: int
    start: int
    end: int
    layout: Plain
    layout_gen: int = 0
    timestamp: int = 0
    #: padding on older servers; erasure-coding and compression settings on newer ones
    reserved: bytes = bytes(4)


@dataclass(frozen=True)
class Composite:
    """A composite layout (PFL, FLR mirrors, DoM as a first component)."""

    components: tuple[Component, ...]
    flags: int = 0
    mirror_count: int = 0  # mirrors minus one
    layout_gen: int = 0
    reserved: bytes = bytes(14)  # after the mirror count: padding, or the EC count


@dataclass(frozen=True)
class Foreign:
    """A layout naming storage outside Lustre (e.g. a DAOS container): kept opaque."""

    type: int
    flags: int
    value: bytes


Layout = Plain | Composite | Foreign


def decode(blob: bytes) -> Layout:
    """The layout in ``blob``; LayoutError when it is truncated, garbled or unknown."""
    magic = _magic(blob, "layout")
    if magic == MAGIC_COMP_V1:
        return _decode_composite(blob)
    if magic == MAGIC_FOREIGN:
        return _decode_foreign(blob)
    return _decode_plain(blob, magic, "layout")


def encode(layout: Layout) -> bytes:
    """The bytes of ``layout``; a composite one's offsets and sizes are computed afresh."""
    try:
        if isinstance(layout, Plain):
            return _encode_plain(layout)
        if isinstance(layout, Composite):
            return _encode_composite(layout)
        return _FOREIGN.pack(MAGIC_FOREIGN, len(layout.value), layout.type,
                             layout.flags) + layout.value
    except struct.error as exc:
        raise LayoutError(f"layout field out of range: {exc}") from None


def sanitize(layout: Layout, pool_map: Mapping[str, str] | None = None,
             target_pools: Collection[str] | None = None) -> Plain | Composite:
    """``layout`` as a request for a new file on another filesystem: what the server uses
    (pattern, stripe size and count, pool, extents, mirrors) and nothing it assigned. Every
    stripe offset becomes "any" (copied as-is, every file would start on the same OST),
    objects and generations go, the released and hole flags are cleared, SPECIFIC becomes v3
    (its OST list names the source's OSTs) and pools are mapped (see :func:`map_pool`)."""
    pools = pool_map or {}
    if isinstance(layout, Plain):
        return _clean(layout, pools, target_pools)
    if isinstance(layout, Composite):
        return replace(layout, flags=layout.flags & ~_FLR_STATE, layout_gen=0, components=tuple(
            replace(c, flags=c.flags & ~_COMP_STATE, layout_gen=0, timestamp=0,
                    layout=_clean(c.layout, pools, target_pools))
            for c in layout.components))
    raise LayoutError("a foreign layout names storage outside this filesystem: not re-used")


def map_pool(name: str, pool_map: Mapping[str, str],
             target_pools: Collection[str] | None) -> str:
    """The target's pool for source pool ``name``: renamed by ``pool_map`` (a site's
    ``{"old": "new"}``), and "" (none) where ``target_pools`` (None: not known) lacks it."""
    if not name:
        return ""
    name = pool_map.get(name, name)
    if target_pools is not None and name not in target_pools:
        return ""
    return name


def is_released(blob: bytes) -> bool:
    """Whether an HSM release left this file's data on tape only: reading it would recall it."""
    layout = decode(blob)
    if isinstance(layout, Plain):
        return layout.released
    if isinstance(layout, Composite):
        return any(c.layout.released for c in layout.components)
    return False


def kind(layout: Layout) -> str:
    """The feature a server may lack that ``layout`` needs most, for counting refusals:
    foreign, dom, flr, pfl, overstriping, pool or plain."""
    if isinstance(layout, Foreign):
        return "foreign"
    parts = [c.layout for c in layout.components] if isinstance(layout, Composite) else [layout]
    if any(p.pattern & PATTERN_MDT for p in parts):
        return "dom"
    if isinstance(layout, Composite):
        return "flr" if layout.mirror_count else "pfl"
    if layout.pattern & PATTERN_OVERSTRIPING:
        return "overstriping"
    return "pool" if layout.pool else "plain"


def _magic(blob: bytes, what: str) -> int:
    if len(blob) < 4:
        raise LayoutError(f"{what} truncated: {len(blob)} bytes")
    (magic,) = struct.unpack_from("=I", blob)
    if magic not in _KNOWN:
        swapped = int.from_bytes(blob[:4], "big" if sys.byteorder == "little" else "little")
        if swapped in _KNOWN:
            raise LayoutError(f"{what} is in the other byte order (magic {swapped:#010x})")
        raise LayoutError(f"{what} has an unknown magic {magic:#010x}")
    return magic


def _decode_plain(blob: bytes, magic: int, what: str) -> Plain:
    if magic not in _PLAIN:
        raise LayoutError(f"{what} has magic {magic:#010x}, not a plain layout")
    head = _HEAD.size + (0 if magic == MAGIC_V1 else _POOL)
    if len(blob) < head:
        raise LayoutError(f"{what} truncated: {len(blob)} bytes, its header needs {head}")
    if (len(blob) - head) % _OBJECT.size:
        raise LayoutError(f"{what} has {len(blob) - head} bytes of objects, "
                          f"not a whole number of {_OBJECT.size}-byte entries")
    _, pattern, oid, oseq, size, count, offset = _HEAD.unpack_from(blob)
    pool = "" if magic == MAGIC_V1 else _decode_pool(blob[_HEAD.size:head], what)
    objects = tuple(Stripe(*o) for o in _OBJECT.iter_unpack(blob[head:]))
    return Plain(magic, pattern, size, count, offset, pool, oid, oseq, objects)


def _decode_pool(field: bytes, what: str) -> str:
    end = field.find(b"\0")
    if end < 0:
        raise LayoutError(f"{what} has a pool name without its terminating NUL")
    return field[:end].decode("utf-8", "surrogateescape")


def _decode_composite(blob: bytes) -> Composite:
    if len(blob) < _COMP.size:
        raise LayoutError(f"composite layout truncated: {len(blob)} bytes")
    _, size, gen, flags, count, mirrors, reserved = _COMP.unpack_from(blob)
    if size != len(blob):
        raise LayoutError(f"composite layout says {size} bytes, has {len(blob)}")
    table_end = _COMP.size + count * _ENTRY.size
    if not count or table_end > size:
        raise LayoutError(f"composite layout of {size} bytes cannot hold {count} components")
    components = []
    for i in range(count):
        cid, cflags, start, end, offset, csize, cgen, stamp, creserved = _ENTRY.unpack_from(
            blob, _COMP.size + i * _ENTRY.size)
        what = f"component {i}"
        if offset < table_end or offset + csize > size:
            raise LayoutError(f"{what} lies at bytes {offset}-{offset + csize}, outside "
                              f"{table_end}-{size}")
        part = blob[offset:offset + csize]
        layout = _decode_plain(part, _magic(part, what), what)
        components.append(Component(cid, cflags, start, end, layout, cgen, stamp, creserved))
    return Composite(tuple(components), flags, mirrors, gen, reserved)


def _decode_foreign(blob: bytes) -> Foreign:
    if len(blob) < _FOREIGN.size:
        raise LayoutError(f"foreign layout truncated: {len(blob)} bytes")
    _, length, ftype, flags = _FOREIGN.unpack_from(blob)
    if _FOREIGN.size + length != len(blob):
        raise LayoutError(f"foreign layout says {length} bytes of value, has "
                          f"{len(blob) - _FOREIGN.size}")
    return Foreign(ftype, flags, blob[_FOREIGN.size:])


def _encode_plain(p: Plain) -> bytes:
    if p.magic not in _PLAIN:
        raise LayoutError(f"magic {p.magic:#010x} is not a plain layout's")
    pool = b""
    if p.magic != MAGIC_V1:
        pool = p.pool.encode("utf-8", "surrogateescape")
        if len(pool) >= _POOL or b"\0" in pool:
            raise LayoutError(f"pool name {p.pool!r} does not fit Lustre's 15 bytes")
    elif p.pool:
        raise LayoutError(f"a v1 layout has no pool (asked for {p.pool!r})")
    head = _HEAD.pack(p.magic, p.pattern, p.object_id, p.object_seq, p.stripe_size,
                      p.stripe_count, p.stripe_offset)
    pool_field = pool.ljust(_POOL, b"\0") if p.magic != MAGIC_V1 else b""
    return head + pool_field + b"".join(
        _OBJECT.pack(o.object_id, o.object_seq, o.ost_gen, o.ost_index) for o in p.objects)


def _encode_composite(layout: Composite) -> bytes:
    blobs = [_encode_plain(c.layout) for c in layout.components]
    offset = _COMP.size + len(blobs) * _ENTRY.size
    entries = []
    for c, blob in zip(layout.components, blobs, strict=True):
        entries.append(_ENTRY.pack(c.id, c.flags, c.start, c.end, offset, len(blob),
                                   c.layout_gen, c.timestamp, c.reserved))
        offset += len(blob)
    head = _COMP.pack(MAGIC_COMP_V1, offset, layout.layout_gen, layout.flags, len(blobs),
                      layout.mirror_count, layout.reserved)
    return head + b"".join(entries) + b"".join(blobs)


def _clean(p: Plain, pool_map: Mapping[str, str], target_pools: Collection[str] | None) -> Plain:
    v1 = p.magic == MAGIC_V1
    return Plain(MAGIC_V1 if v1 else MAGIC_V3, p.pattern & ~(PATTERN_F_RELEASED | PATTERN_F_HOLE),
                 p.stripe_size, p.stripe_count, OFFSET_ANY,
                 "" if v1 else map_pool(p.pool, pool_map, target_pools))
