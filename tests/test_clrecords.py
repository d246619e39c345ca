"""Lustre changelog records as ``lfs changelog`` prints them (lustre/utils/lfs.c): every type,
the optional fields present and absent, renames with and without an overwritten target, names
that are not UTF-8 or hold spaces and newlines, and lines that are no record."""

from __future__ import annotations

import pytest

from fsclone.changes.clrecords import (
    TYPES,
    AmbiguousRecord,
    ChangelogParseError,
    Record,
    parse_lines,
    parse_record,
)

HEAD = b"12:00:01.123456789 2026.12.02"
DIR = b"0x200000007:0x1:0x0"
FILE = b"0x200000402:0x3:0x0"
OTHER = b"0x200000402:0x9:0x0"
ZERO = b"0x0:0x0:0x0"
#: the optional fields of a recent server and client, in lfs's order
EXTRA = b" j=cp.1000 ef=0xf u=1000:100 nid=192.168.1.5@tcp"


def line(index: int, kind: str, tail: bytes = b"", target: bytes = FILE, flags: int = 0,
         extra: bytes = EXTRA) -> bytes:
    num = TYPES.index(kind)
    return (f"{index} {num:02d}{kind:<5} ".encode() + HEAD + f" 0x{flags:x} t=[".encode()
            + target + b"]" + extra + tail)


@pytest.mark.parametrize("kind", ["CREAT", "MKDIR", "HLINK", "SLINK", "MKNOD", "UNLNK",
                                  "RMDIR"])
@pytest.mark.parametrize("extra", [EXTRA, b""], ids=["fields", "bare"])
def test_namespace_records_name_their_parent(kind: str, extra: bytes) -> None:
    record = parse_record(line(7, kind, b" p=[" + DIR + b"] data.1", extra=extra))
    assert (record.index, record.type, record.target) == (7, kind, FILE.decode())
    assert (record.parent, record.name) == (DIR.decode(), b"data.1")
    assert record.source is None and record.source_name is None
    if extra:
        assert (record.jobid, record.extra_flags, record.uid_gid, record.nid) == (
            b"cp.1000", 0xf, (1000, 100), b"192.168.1.5@tcp")
    else:
        assert (record.jobid, record.extra_flags, record.uid_gid, record.nid) == (
            None, None, None, None)


@pytest.mark.parametrize("kind", ["CLOSE", "LYOUT", "TRUNC", "SATTR", "HSM", "MTIME",
                                  "CTIME", "ATIME", "OPEN", "FLRW", "RESYNC", "NOPEN"])
def test_records_of_an_object_may_have_no_parent(kind: str) -> None:
    record = parse_record(line(8, kind, flags=0x42))
    assert (record.type, record.flags, record.target) == (kind, 0x42, FILE.decode())
    assert record.parent is None and record.name is None
    with_parent = parse_record(line(8, kind, b" p=[" + DIR + b"] f"))
    assert (with_parent.parent, with_parent.name) == (DIR.decode(), b"f")


def test_the_open_mode_of_a_close_and_the_name_of_an_xattr() -> None:
    close = parse_record(line(9, "CLOSE", extra=EXTRA + b" m=-w-"))
    assert close.open_mode == b"-w-"
    xattr = parse_record(line(10, "XATTR", extra=EXTRA + b" x=user.with space"))
    assert xattr.xattr == b"user.with space" and xattr.parent is None
    xattr = parse_record(line(10, "XATTR", b" p=[" + DIR + b"] f", extra=b" x=trusted.lov"))
    assert (xattr.xattr, xattr.parent, xattr.name) == (b"trusted.lov", DIR.decode(), b"f")


def test_a_mark_has_a_type_four_letters_long() -> None:
    record = parse_record(line(1, "MARK", b" p=[" + ZERO + b"] mdd_obd-testfs-MDT0000-0",
                               target=ZERO))
    assert (record.type, record.name) == ("MARK", b"mdd_obd-testfs-MDT0000-0")


def test_a_rename_without_an_overwritten_target() -> None:
    record = parse_record(line(11, "RENME", b" p=[" + DIR + b"] new name s=[" + FILE
                               + b"] sp=[" + OTHER + b"] old name", target=ZERO))
    assert record.target == ZERO.decode() and record.flags == 0
    assert (record.parent, record.name) == (DIR.decode(), b"new name")
    assert (record.source, record.source_parent, record.source_name) == (
        FILE.decode(), OTHER.decode(), b"old name")


def test_a_rename_over_a_target_names_the_target_it_removed() -> None:
    record = parse_record(line(12, "RENME", b" p=[" + DIR + b"] b s=[" + OTHER + b"] sp=["
                               + DIR + b"] a", target=FILE, flags=0x1))
    assert (record.target, record.flags) == (FILE.decode(), 0x1)  # CLF_RENAME_LAST
    assert (record.name, record.source, record.source_name) == (b"b", OTHER.decode(), b"a")


def test_an_old_servers_rename_is_two_records() -> None:
    first, second = parse_lines([
        line(13, "RENME", b" p=[" + OTHER + b"] old", extra=b""),
        line(14, "RNMTO", b" p=[" + DIR + b"] new", extra=b"")])
    assert (first.type, first.parent, first.name, first.source) == (
        "RENME", OTHER.decode(), b"old", None)
    assert (second.type, second.parent, second.name) == ("RNMTO", DIR.decode(), b"new")


def test_names_are_bytes_whatever_they_hold() -> None:
    raw = b"caf\xe9 \xff\xfe  two  spaces "
    record = parse_record(line(15, "CREAT", b" p=[" + DIR + b"] " + raw))
    assert record.name == raw
    rename = parse_record(line(16, "RENME", b" p=[" + DIR + b"] \xe9 s=[" + FILE + b"] sp=["
                               + DIR + b"] \x80x"))
    assert (rename.name, rename.source_name) == (b"\xe9", b"\x80x")


def test_a_newline_in_a_name_continues_the_record() -> None:
    records = list(parse_lines([
        line(17, "CREAT", b" p=[" + DIR + b"] two\n"), b"lines\n",
        line(18, "UNLNK", b" p=[" + DIR + b"] next\n")]))
    assert [(r.index, r.name) for r in records] == [(17, b"two\nlines"), (18, b"next")]


def test_an_unknown_type_is_kept_by_its_number() -> None:
    record = parse_record(b"19 40FUTUR " + HEAD + b" 0x0 t=[" + FILE + b"] p=[" + DIR + b"] x")
    assert (record.type, record.parent) == ("40?", DIR.decode())
    assert isinstance(record, Record)


@pytest.mark.parametrize("text, why", [
    (b"garbage", "not a changelog record"),
    (b"20 01CREAT 12:00 2026.12.02 0x0 t=[" + FILE + b"]", "not a changelog record"),
    (b"21 01CREAT " + HEAD + b" 0x0 t=[0x1:0x2]", "not a changelog record"),
    (b"22 02CREAT " + HEAD + b" 0x0 t=[" + FILE + b"]", "type 02 is MKDIR"),
    (b"23 01CREAT " + HEAD + b" 0x0 t=[" + FILE + b"] u=x:y", "garbled"),
    (b"24 02MKDIR " + HEAD + b" 0x0 t=[" + FILE + b"] p=[" + DIR + b"] ../../etc", "no file"),
    (b"25 08RENME " + HEAD + b" 0x0 t=[" + ZERO + b"] p=[" + DIR + b"] b s=[" + FILE + b"] sp=["
     + DIR + b"] ..", "no file"),
])
def test_a_line_that_is_no_record_names_its_number(text: bytes, why: str) -> None:
    with pytest.raises(ChangelogParseError, match=why) as caught:
        list(parse_lines([line(1, "MARK", target=ZERO), line(2, "CLOSE"), text]))
    assert caught.value.line_number == 3
    assert str(caught.value).startswith("changelog line 3: ")


def test_the_first_line_must_start_a_record() -> None:
    with pytest.raises(ChangelogParseError) as caught:
        list(parse_lines([b"a name's second line", line(1, "CLOSE")]))
    assert caught.value.line_number == 1


@pytest.mark.parametrize("tail, kind", [
    (b" p=[" + DIR + b"] a p=[" + OTHER + b"] b", "CREAT"),
    (b" p=[" + DIR + b"] a s=[" + FILE + b"] sp=[" + OTHER + b"] b", "CREAT"),
    (b" p=[" + DIR + b"] a s=[" + FILE + b"] sp=[" + OTHER + b"] b s=[" + FILE + b"] sp=["
     + DIR + b"] c", "RENME"),
])
def test_a_name_that_reads_as_a_field_is_ambiguous(tail: bytes, kind: str) -> None:
    with pytest.raises(AmbiguousRecord):
        parse_record(line(30, kind, tail))
