"""Lustre pieces without a Lustre: layouts built byte by byte from lustre_user.h's structures,
the internal-xattr skip list, the create path through a recording double of its OS calls, and
statfs kinds on real mounts."""

from __future__ import annotations

import contextlib
import errno
import os
import platform
import stat
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fsclone.config import Config
from fsclone.engine.coordinator import Hooks
from fsclone.engine.launch import PassRequest, run_pass
from fsclone.errors import FscloneError, LayoutError
from fsclone.fs import fstype
from fsclone.fs.lustre import layout as lov
from fsclone.fs.lustre.create import (
    LAYOUT_XATTR,
    NEW_FILE,
    O_LOV_DELAY_CREATE,
    LustreCreate,
    dir_default_change,
    own_default,
)
from fsclone.fs.lustre.layout import Component, Composite, Foreign, Plain, Stripe
from fsclone.fs.xattrnames import is_internal
from fsclone.transport.memory import MemoryTransport
from tests.clirun import fsclone_json
from tests.mounts import loop_fs, require_root

# -- the structures, written out here independently of the codec (host order, packed) --------

V1, V3, SPECIFIC, COMP, FOREIGN = 0x0BD10BD0, 0x0BD30BD0, 0x0BD50BD0, 0x0BD60BD0, 0x0BD70BD0
RAID0, MDT, RELEASED = 0x1, 0x100, 0x80000000
INIT, STALE, PREF_RD = 0x10, 0x1, 0x2
MiB = 1 << 20
EOF = 2**64 - 1


def obj(oid: int, seq: int, gen: int, idx: int) -> bytes:
    return struct.pack("=QQII", oid, seq, gen, idx)


def v1(pattern: int, size: int, count: int, offset: int, objects: bytes = b"",
       oi: tuple[int, int] = (0x1234, 0x200000401)) -> bytes:
    return struct.pack("=IIQQIHH", V1, pattern, *oi, size, count, offset) + objects


def v3(pattern: int, size: int, count: int, offset: int, pool: bytes, objects: bytes = b"",
       magic: int = V3, oi: tuple[int, int] = (0x1234, 0x200000401)) -> bytes:
    return (struct.pack("=IIQQIHH", magic, pattern, *oi, size, count, offset)
            + pool.ljust(16, b"\0") + objects)


def comp(entries: list[tuple[int, int, int, int, bytes]], gen: int = 9, flags: int = 0,
         mirrors: int = 0) -> bytes:
    """A composite layout: entries (id, flags, start, end, component blob), laid out as
    Lustre does (blobs after the entry table, in order)."""
    offset = 32 + 48 * len(entries)
    table, blobs = b"", b""
    for cid, cflags, start, end, blob in entries:
        table += struct.pack("=IIQQIIIQI", cid, cflags, start, end, offset, len(blob), 3,
                             1_700_000_000, 0)
        blobs += blob
        offset += len(blob)
    head = struct.pack("=IIIHHHHHHQ", COMP, offset, gen, flags, len(entries), mirrors, 0, 0, 0, 0)
    return head + table + blobs


def entries_of(blob: bytes) -> list[tuple[int, ...]]:
    """(id, flags, start, end, offset, size, gen, timestamp) of each component, read back."""
    count = struct.unpack_from("=H", blob, 14)[0]
    return [struct.unpack_from("=IIQQIIIQ", blob, 32 + 48 * i) for i in range(count)]


TWO_OBJECTS = obj(0x41, 0x100000000, 0, 3) + obj(0x42, 0x100010000, 0, 4)
PLAIN_V1 = v1(RAID0, MiB, 2, 7, TWO_OBJECTS)
POOLED_V3 = v3(RAID0, 4 * MiB, 1, 7, b"flash", obj(0x51, 0x100020000, 1, 5))
SPECIFIC_OSTS = v3(RAID0, MiB, 3, 0xFFFF, b"flash",
                   obj(0, 0, 0, 3) + obj(0, 0, 0, 5) + obj(0, 0, 0, 7), magic=SPECIFIC)
PFL = comp([
    (1, INIT, 0, MiB, v1(MDT, MiB, 0, 2)),  # Data-on-MDT
    (2, INIT, MiB, 64 * MiB, v1(RAID0, MiB, 1, 2, obj(0x61, 0x100000000, 0, 2))),
    (3, 0, 64 * MiB, EOF, v3(RAID0, 4 * MiB, 4, 0xFFFF, b"archive")),  # not instantiated
], flags=2)  # FLR state: write pending


# -- decode, sanitize, encode -----------------------------------------------------------------

def test_v1_decodes_every_field_and_round_trips() -> None:
    layout = lov.decode(PLAIN_V1)
    assert layout == Plain(V1, RAID0, MiB, 2, 7, "", 0x1234, 0x200000401, (
        Stripe(0x41, 0x100000000, 0, 3), Stripe(0x42, 0x100010000, 0, 4)))
    assert lov.encode(layout) == PLAIN_V1
    clean = lov.sanitize(layout)
    assert clean == Plain(V1, RAID0, MiB, 2, 0xFFFF)
    assert lov.encode(clean) == v1(RAID0, MiB, 2, 0xFFFF, oi=(0, 0))


def test_v3_pool_is_decoded_kept_mapped_or_dropped() -> None:
    layout = lov.decode(POOLED_V3)
    assert layout == Plain(V3, RAID0, 4 * MiB, 1, 7, "flash", 0x1234, 0x200000401,
                           (Stripe(0x51, 0x100020000, 1, 5),))
    assert lov.encode(layout) == POOLED_V3
    assert lov.encode(lov.sanitize(layout)) == v3(RAID0, 4 * MiB, 1, 0xFFFF, b"flash",
                                                  oi=(0, 0))
    def pool(pool_map: dict[str, str] | None, target_pools: set[str] | None = None) -> str:
        plain = lov.sanitize(layout, pool_map, target_pools)
        assert isinstance(plain, Plain)
        return plain.pool

    assert pool({"flash": "ssd"}) == "ssd"
    assert pool({"flash": "ssd"}, {"ssd", "hdd"}) == "ssd"
    assert pool({"flash": "ssd"}, {"hdd"}) == ""  # the target lacks it
    assert pool(None, {"flash"}) == "flash"
    assert pool({"other": "x"}, set()) == ""
    dropped = lov.encode(lov.sanitize(layout, None, {"hdd"}))
    assert dropped == v3(RAID0, 4 * MiB, 1, 0xFFFF, b"", oi=(0, 0))


def test_specific_becomes_plain_v3_without_its_ost_list() -> None:
    layout = lov.decode(SPECIFIC_OSTS)
    assert isinstance(layout, Plain) and layout.magic == SPECIFIC
    assert [o.ost_index for o in layout.objects] == [3, 5, 7]
    assert lov.encode(layout) == SPECIFIC_OSTS
    assert lov.encode(lov.sanitize(layout)) == v3(RAID0, MiB, 3, 0xFFFF, b"flash", oi=(0, 0))


def test_composite_with_dom_and_pooled_v3_components_round_trips() -> None:
    layout = lov.decode(PFL)
    assert isinstance(layout, Composite)
    assert (layout.flags, layout.mirror_count, layout.layout_gen) == (2, 0, 9)
    assert [(c.id, c.flags, c.start, c.end, c.layout_gen, c.timestamp)
            for c in layout.components] == [
        (1, INIT, 0, MiB, 3, 1_700_000_000), (2, INIT, MiB, 64 * MiB, 3, 1_700_000_000),
        (3, 0, 64 * MiB, EOF, 3, 1_700_000_000)]
    dom, mid, tail = (c.layout for c in layout.components)
    assert dom == Plain(V1, MDT, MiB, 0, 2, "", 0x1234, 0x200000401)
    assert mid.objects == (Stripe(0x61, 0x100000000, 0, 2),)
    assert (tail.magic, tail.pool, tail.stripe_count, tail.objects) == (V3, "archive", 4, ())
    assert lov.encode(layout) == PFL

    clean = lov.encode(lov.sanitize(layout, {"archive": "cold"}))
    assert struct.unpack_from("=IIIHHH", clean) == (COMP, 32 + 3 * 48 + 32 + 32 + 48, 0, 0, 3, 0)
    assert entries_of(clean) == [  # state flags, generations and times gone; offsets anew
        (1, 0, 0, MiB, 176, 32, 0, 0),
        (2, 0, MiB, 64 * MiB, 208, 32, 0, 0),
        (3, 0, 64 * MiB, EOF, 240, 48, 0, 0)]
    assert clean[176:208] == v1(MDT, MiB, 0, 0xFFFF, oi=(0, 0))
    assert clean[208:240] == v1(RAID0, MiB, 1, 0xFFFF, oi=(0, 0))
    assert clean[240:288] == v3(RAID0, 4 * MiB, 4, 0xFFFF, b"cold", oi=(0, 0))
    assert lov.decode(clean) == lov.sanitize(layout, {"archive": "cold"})


def test_sanitize_keeps_requested_component_flags_and_mirror_ids() -> None:
    mirrored = comp([((1 << 16) | 1, INIT | PREF_RD, 0, EOF, v1(RAID0, MiB, 1, 4)),
                     ((2 << 16) | 2, STALE, 0, EOF, v1(RAID0, MiB, 1, 4))], mirrors=1, flags=3)
    clean = lov.sanitize(lov.decode(mirrored))
    assert isinstance(clean, Composite) and (clean.mirror_count, clean.flags) == (1, 0)
    assert [(c.id, c.flags) for c in clean.components] == [
        ((1 << 16) | 1, PREF_RD), ((2 << 16) | 2, 0)]
    assert lov.kind(clean) == "flr"


def test_released_files_are_detected_and_sanitize_clears_the_flag() -> None:
    released = v1(RAID0 | RELEASED, MiB, 2, 0)  # released: no objects left
    assert lov.is_released(released)
    assert not lov.is_released(PLAIN_V1)
    assert lov.encode(lov.sanitize(lov.decode(released))) == v1(RAID0, MiB, 2, 0xFFFF, oi=(0, 0))
    composite = comp([(1, INIT, 0, EOF, v3(RAID0 | RELEASED, MiB, 1, 0, b""))])
    assert lov.is_released(composite)
    assert not lov.is_released(PFL)
    sanitized = lov.sanitize(lov.decode(composite))
    assert isinstance(sanitized, Composite)
    assert sanitized.components[0].layout.pattern == RAID0


def test_foreign_layouts_are_kept_opaque_and_never_reused() -> None:
    blob = struct.pack("=IIII", FOREIGN, 5, 0xDA05, 7) + b"daos:"
    layout = lov.decode(blob)
    assert layout == Foreign(0xDA05, 7, b"daos:")
    assert lov.encode(layout) == blob
    assert not lov.is_released(blob)
    assert lov.kind(layout) == "foreign"
    with pytest.raises(LayoutError, match="foreign"):
        lov.sanitize(layout)


def test_kinds_name_what_an_older_server_may_refuse() -> None:
    assert [lov.kind(lov.decode(b)) for b in (PLAIN_V1, POOLED_V3, PFL)] == ["plain", "pool",
                                                                             "dom"]
    assert lov.kind(lov.decode(comp([(1, 0, 0, EOF, v1(RAID0, MiB, 1, 0))]))) == "pfl"
    assert lov.kind(lov.decode(v1(RAID0 | 0x200, MiB, 8, 0))) == "overstriping"


@pytest.mark.parametrize("blob, message", [
    (b"", "truncated"),
    (b"\xd0\x0b\xd1", "truncated"),
    (struct.pack("=I", 0x0BD90BD0) + bytes(28), "unknown magic"),
    (struct.pack(">I" if struct.pack("=I", 1)[0] else "<I", V1) + bytes(28), "byte order"),
    (PLAIN_V1[:31], "truncated"),
    (PLAIN_V1 + b"\0" * 10, "whole number"),
    (POOLED_V3[:32] + b"x" * 16, "NUL"),
    (PFL[:-1], "says"),
    (PFL + b"\0", "says"),
    (struct.pack("=IIIHHH14s", COMP, 32, 0, 0, 0, 0, b""), "cannot hold"),
    (struct.pack("=IIIHHH14s", COMP, 60, 0, 0, 1, 0, b"") + bytes(28), "cannot hold"),
    (PFL[:32 + 24] + struct.pack("=I", 8) + PFL[32 + 28:], "outside"),  # inside the header
    (PFL[:32 + 28] + struct.pack("=I", 4000) + PFL[32 + 32:], "outside"),
    (comp([(1, 0, 0, EOF, comp([(1, 0, 0, EOF, v1(RAID0, MiB, 1, 0))]))]), "not a plain"),
    (comp([(1, 0, 0, EOF, v1(RAID0, MiB, 1, 0) + b"\0")]), "component 0"),
    (struct.pack("=IIII", FOREIGN, 9, 0, 0) + b"daos:", "foreign"),
])
def test_garbled_layouts_raise_the_typed_error(blob: bytes, message: str) -> None:
    with pytest.raises(LayoutError, match=message) as caught:
        lov.decode(blob)
    assert isinstance(caught.value, FscloneError)
    with pytest.raises(LayoutError):
        lov.is_released(blob)


@pytest.mark.parametrize("blob", [PFL, struct.pack("=IIII", FOREIGN, 5, 0, 0) + b"daos:"])
def test_every_truncation_of_a_sized_layout_is_refused(blob: bytes) -> None:
    for end in range(len(blob)):
        with pytest.raises(LayoutError):
            lov.decode(blob[:end])


def test_plain_truncations_are_refused_except_at_whole_objects() -> None:
    for end in range(len(PLAIN_V1)):
        if end in (32, 56):  # the header alone, or with one object: valid v1 layouts
            plain = lov.decode(PLAIN_V1[:end])
            assert isinstance(plain, Plain)
            assert len(plain.objects) == (end - 32) // 24
        else:
            with pytest.raises(LayoutError):
                lov.decode(PLAIN_V1[:end])


def test_encode_refuses_what_lustre_cannot_hold() -> None:
    with pytest.raises(LayoutError, match="15 bytes"):
        lov.encode(Plain(V3, RAID0, MiB, 1, pool="a-very-long-poolname"))
    with pytest.raises(LayoutError, match="no pool"):
        lov.encode(Plain(V1, RAID0, MiB, 1, pool="flash"))
    with pytest.raises(LayoutError, match="out of range"):
        lov.encode(Plain(V1, RAID0, MiB, 70000))
    with pytest.raises(LayoutError, match="not a plain"):
        lov.encode(Composite((Component(1, 0, 0, EOF, Plain(COMP, RAID0, MiB, 1)),)))


# -- the internal-xattr skip list -------------------------------------------------------------

@pytest.mark.parametrize("name", [
    "trusted.lov", "trusted.lma", "trusted.link", "trusted.fid", "trusted.version",
    "trusted.som", "trusted.hsm", "trusted.lmv", "trusted.dmv", "trusted.lfsck_namespace",
    "trusted.lfsck_bitmap", "lustre.lov", "lustre.lov.add", "lustre.anything",
])
def test_lustre_internal_xattrs_are_never_copied(name: str) -> None:
    assert is_internal(name)


@pytest.mark.parametrize("name", [
    "user.lustre.lov", "user.trusted.lov", "trusted.lovely", "trusted.lfsck", "trusted.overlay",
    "trusted.md5", "security.selinux", "security.capability", "system.posix_acl_access",
    "system.posix_acl_default", "user.comment", "lustre", "trusted.",
])
def test_other_xattrs_are_copied(name: str) -> None:
    assert not is_internal(name)


# -- the create path, through a recording double ---------------------------------------------

class RecordingOS:
    """Records the create path's calls; setxattr answers ``refuse(value)`` with an errno."""

    def __init__(self, refuse: Callable[[bytes], int | None] = lambda value: None) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.refuse = refuse
        self.next_fd = 10

    def open(self, path: str, flags: int, mode: int = 0o777, *,
             dir_fd: int | None = None) -> int:
        self.next_fd += 1
        self.calls.append(("open", path, flags, mode, dir_fd, self.next_fd))
        return self.next_fd

    def setxattr(self, path: str | int, attribute: str, value: bytes, flags: int = 0) -> None:
        self.calls.append(("setxattr", path, attribute, value))
        err = self.refuse(value)
        if err:
            raise OSError(err, os.strerror(err))

    def close(self, fd: int) -> None:
        self.calls.append(("close", fd))

    def unlink(self, path: str, *, dir_fd: int | None = None) -> None:
        self.calls.append(("unlink", path, dir_fd))


def refuse_composites(value: bytes) -> int | None:
    """An older server: PFL and DoM layouts are EINVAL."""
    return errno.EINVAL if value[:4] == struct.pack("=I", COMP) else None


def test_delay_create_flag_is_the_documented_bits() -> None:
    assert O_LOV_DELAY_CREATE == os.O_NOCTTY | os.O_ASYNC
    if platform.machine() == "x86_64":
        assert O_LOV_DELAY_CREATE == 0o20400
    for bit in (os.O_WRONLY, os.O_CREAT, os.O_EXCL, os.O_NOFOLLOW):
        assert NEW_FILE & bit


def test_layout_is_set_on_the_delayed_open_before_the_caller_gets_the_fd() -> None:
    rec = RecordingOS()
    create = LustreCreate({"flash": "ssd"}, osapi=rec)
    fd = create.create(5, ".tmp.a", 0o600, POOLED_V3)
    assert fd == 11
    assert rec.calls == [
        ("open", ".tmp.a", NEW_FILE | O_LOV_DELAY_CREATE, 0o600, 5, 11),
        ("setxattr", 11, LAYOUT_XATTR, v3(RAID0, 4 * MiB, 1, 0xFFFF, b"ssd", oi=(0, 0))),
    ]
    assert not create.fallbacks and create.report() == []


def test_no_source_layout_is_a_plain_create() -> None:
    rec = RecordingOS()
    assert LustreCreate(osapi=rec).create(5, ".tmp.a", 0o600, None) == 11
    assert rec.calls == [("open", ".tmp.a", NEW_FILE, 0o600, 5, 11)]


def test_a_refused_kind_falls_back_once_and_is_counted_per_file() -> None:
    rec = RecordingOS(refuse_composites)
    create = LustreCreate(osapi=rec)
    first = create.create(5, ".tmp.1", 0o600, PFL)
    assert rec.calls == [
        ("open", ".tmp.1", NEW_FILE | O_LOV_DELAY_CREATE, 0o600, 5, 11),
        ("setxattr", 11, LAYOUT_XATTR, lov.encode(lov.sanitize(lov.decode(PFL)))),
        # the same inode opened again without the delay: it gets the target's default
        ("open", "/proc/self/fd/11", os.O_WRONLY | os.O_CLOEXEC, 0o777, None, 12),
        ("close", 11),
    ]
    assert first == 12
    rec.calls.clear()
    create.create(5, ".tmp.2", 0o600, PFL)
    create.create(5, ".tmp.3", 0o600, PLAIN_V1)
    assert [c[0] for c in rec.calls] == ["open", "open", "setxattr"]  # no second PFL attempt
    assert rec.calls[0][2] == NEW_FILE
    assert rec.calls[1][2] == NEW_FILE | O_LOV_DELAY_CREATE
    assert create.fallbacks == {"dom": 2}
    assert create.report() == ["2 kept the target's default layout (dom: EINVAL from the target)"]


def test_a_target_without_layouts_is_learnt_at_the_first_refusal() -> None:
    rec = RecordingOS(lambda value: errno.EOPNOTSUPP)
    create = LustreCreate(osapi=rec)
    for name in (".tmp.1", ".tmp.2", ".tmp.3"):
        create.create(5, name, 0o600, POOLED_V3 if name == ".tmp.1" else PLAIN_V1)
    assert [c[0] for c in rec.calls] == ["open", "setxattr", "open", "close", "open", "open"]
    assert create.fallbacks == {"pool": 1, "plain": 2}
    name = errno.errorcode[errno.EOPNOTSUPP]
    assert create.reasons == {"pool": f"{name} from the target", "plain": f"{name} from the target"}


def test_another_setxattr_error_removes_the_new_file_and_is_raised() -> None:
    rec = RecordingOS(lambda value: errno.ENOSPC)
    create = LustreCreate(osapi=rec)
    with pytest.raises(OSError) as caught:
        create.create(5, ".tmp.1", 0o600, PLAIN_V1)
    assert caught.value.errno == errno.ENOSPC
    assert rec.calls[2:] == [("close", 11), ("unlink", ".tmp.1", 5)]
    assert not create.fallbacks


@pytest.mark.parametrize("blob, lkind", [
    (struct.pack("=IIII", FOREIGN, 5, 0xDA05, 0) + b"daos:", "foreign"),
    (PLAIN_V1[:40], "unreadable"),
])
def test_layouts_that_cannot_be_reused_leave_the_target_default(blob: bytes, lkind: str) -> None:
    rec = RecordingOS()
    create = LustreCreate(osapi=rec)
    create.create(5, ".tmp.1", 0o600, blob)
    assert rec.calls == [("open", ".tmp.1", NEW_FILE, 0o600, 5, 11)]
    assert create.fallbacks == {lkind: 1}


def test_the_real_calls_off_lustre_fall_back_and_the_file_takes_data() -> None:
    """tmpfs has no ``lustre.`` namespace (EOPNOTSUPP): the fallback path with the real os."""
    if _kind_at("/dev/shm") != "tmpfs":
        pytest.skip("no tmpfs on /dev/shm")
    work = Path("/dev/shm") / f"fsclone-lustre-{os.getpid()}"
    work.mkdir()
    dfd = os.open(work, os.O_RDONLY | os.O_DIRECTORY)
    try:
        create = LustreCreate()
        fd = create.create(dfd, ".tmp.a", 0o600, PLAIN_V1)
        os.write(fd, b"data")
        os.close(fd)
        assert (work / ".tmp.a").read_bytes() == b"data"
        assert (work / ".tmp.a").stat().st_mode & 0o777 == 0o600
        assert create.fallbacks == {"plain": 1}
        with pytest.raises(FileExistsError):  # O_EXCL: never an existing name
            create.create(dfd, ".tmp.a", 0o600, PLAIN_V1)
        assert sorted(os.listdir(work)) == [".tmp.a"]
    finally:
        os.close(dfd)
        for entry in work.iterdir():
            entry.unlink()
        work.rmdir()


def test_directory_defaults_are_refused_by_kind_like_files() -> None:
    rec = RecordingOS(refuse_composites)
    create = LustreCreate(osapi=rec)
    create.set_dir_default(7, lov.encode(lov.sanitize(lov.decode(PFL))))
    create.set_dir_default(7, lov.encode(lov.sanitize(lov.decode(PFL))))
    create.set_dir_default(7, b"")
    assert [c[:2] for c in rec.calls] == [("setxattr", 7), ("setxattr", 7)]
    assert rec.calls[1][3] == b""
    assert create.fallbacks == {"dom": 2}


# -- directory default layouts ----------------------------------------------------------------

ROOT_DEFAULT = v3(RAID0, MiB, 1, 0xFFFF, b"flash", oi=(0, 0))
WIDE = v1(RAID0, 4 * MiB, 8, 0xFFFF, oi=(0, 0))


def test_a_directory_showing_its_parents_default_has_none_of_its_own() -> None:
    assert own_default(ROOT_DEFAULT, ROOT_DEFAULT) is None
    assert own_default(None, ROOT_DEFAULT) is None
    assert own_default(WIDE, ROOT_DEFAULT) == WIDE
    assert own_default(WIDE, None) == WIDE  # nothing to compare with: its own
    # generations and object ids are not a difference
    assert own_default(v1(RAID0, 4 * MiB, 8, 3), WIDE) is None


def test_dir_default_change_sets_removes_or_leaves() -> None:
    assert dir_default_change(None, None) is None
    assert dir_default_change(None, WIDE) == b""  # the target's own goes
    assert dir_default_change(v1(RAID0, 4 * MiB, 8, 5), None) == WIDE
    assert dir_default_change(WIDE, v1(RAID0, 4 * MiB, 8, 2)) is None
    assert dir_default_change(ROOT_DEFAULT, WIDE) == ROOT_DEFAULT
    mapped = v3(RAID0, MiB, 1, 0xFFFF, b"ssd", oi=(0, 0))
    assert dir_default_change(ROOT_DEFAULT, None, {"flash": "ssd"}) == mapped
    assert dir_default_change(ROOT_DEFAULT, mapped, {"flash": "ssd"}) is None
    assert dir_default_change(ROOT_DEFAULT, None, None, {"hdd"}) == v3(
        RAID0, MiB, 1, 0xFFFF, b"", oi=(0, 0))


# -- filesystem kinds from statfs -------------------------------------------------------------

def test_statfs_magics_name_their_filesystems() -> None:
    assert {m: fstype.kind_of(m) for m in fstype.KINDS} == {
        0x0BD00BD0: "lustre", 0x47504653: "gpfs", 0x6969: "nfs", 0x58465342: "xfs",
        0xEF53: "ext4", 0x9123683E: "btrfs", 0x01021994: "tmpfs", 0x65735546: "fuse"}
    assert fstype.kind_of(0x9123683E - 2**32) == "btrfs"  # a 32-bit signed long
    assert fstype.kind_of(0x794C7630) == "other"  # overlayfs: no rules of its own


def _kind_at(path: str | Path) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return fstype.fs_kind(fd)
    finally:
        os.close(fd)


def test_statfs_kinds_of_this_machines_mounts() -> None:
    assert _kind_at("/dev/shm") == "tmpfs"
    assert _kind_at("/proc") == "other"
    with pytest.raises(OSError) as caught:
        fstype.fs_magic(-1)
    assert caught.value.errno == errno.EBADF


@pytest.mark.parametrize("kind", ["xfs", "btrfs", "ext4"])
def test_statfs_kinds_of_loop_mounts(tmp_path: Path, kind: str) -> None:
    size = 300 if kind == "xfs" else 128
    with loop_fs(tmp_path / kind, kind, size_mb=size) as mnt:
        assert _kind_at(mnt) == kind


@pytest.mark.parametrize("where", ["tmpfs", "xfs"])
def test_lustres_internal_xattrs_never_reach_the_target(tmp_path: Path, where: str) -> None:
    """trusted.lma, trusted.link and trusted.lov on source files (as a Lustre client shows them
    to root) are neither copied nor taken for a difference; a user's xattrs still are."""
    require_root()
    src, state = tmp_path / "src", tmp_path / "state"
    with contextlib.ExitStack() as stack:
        if where == "xfs":
            src = stack.enter_context(loop_fs(tmp_path / "src", "xfs", size_mb=300))
        src.mkdir(exist_ok=True)
        (src / "f").write_text("data")
        (src / "d").mkdir()
        for path in (src / "f", src / "d"):
            for name in ("trusted.lma", "trusted.link", "trusted.lov"):
                os.setxattr(path, name, b"\x01\x02 from the MDT")
            os.setxattr(path, "user.kept", b"yes")
        dst = tmp_path / "dst"
        rc, out = fsclone_json("pass", "copy", src, dst, state=state)
        assert rc == 0, out
        for rel in ("f", "d"):
            assert os.listxattr(dst / rel) == ["user.kept"], rel
        rc, out = fsclone_json("pass", "sync", src, dst, state=state)
        assert rc == 0, out
        assert out["counters"].get("updated", 0) == 0, out


# -- data flushed before times on a Lustre target ---------------------------------------------

def test_a_lustre_target_has_each_new_files_data_flushed_before_its_times(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Lustre sets a file's times on its OSTs as the writes land: times set before them come out
    wrong (mpiFileUtils issue 94). A target the workers take for Lustre gets every new file's
    data flushed, through the fd its times are then set on, small files and ranged ones alike."""
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    for name in ("a", "d/b"):
        (src / name).write_bytes(b"small")
    (src / "big").write_bytes(os.urandom(3 << 20))
    events: list[tuple[str, int]] = []
    real_sync, real_utime = os.fdatasync, os.utime

    def fdatasync(fd: int) -> None:
        events.append(("sync", os.fstat(fd).st_ino))
        real_sync(fd)

    def utime(target: Any, *args: Any, **kwargs: Any) -> None:
        if isinstance(target, int) and stat_is_file(target):
            events.append(("times", os.fstat(target).st_ino))
        real_utime(target, *args, **kwargs)

    monkeypatch.setattr(fstype, "fs_kind", lambda fd: "lustre")
    monkeypatch.setattr(os, "fdatasync", fdatasync)
    monkeypatch.setattr(os, "utime", utime)
    cfg = Config(workers=1, state_dir=str(tmp_path / "state"), large_file_size=1 << 20,
                 range_size=1 << 20)
    _, summary = run_pass(cfg, PassRequest(op="copy", src=str(src), dst=str(tmp_path / "dst")),
                          Hooks(), MemoryTransport())
    assert summary.error_count == 0
    timed = [ino for what, ino in events if what == "times"]
    names = ("a", "d/b", "big")
    assert set(timed) == {os.stat(tmp_path / "dst" / n).st_ino for n in names}
    for ino in set(timed):  # the last times set on each file follow a flush of its data (an
        # earlier stamp of its inode number may be the time probe's, on an unnamed file)
        last = max(i for i, event in enumerate(events) if event == ("times", ino))
        assert ("sync", ino) in events[:last], events


def stat_is_file(fd: int) -> bool:
    return stat.S_ISREG(os.fstat(fd).st_mode)
