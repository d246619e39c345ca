"""The verify pass: a faithful copy verifies clean, every kind of difference is found, sampling
is reproducible, the manifest holds the right digests, and verifying reads without a trace."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import xxhash

from fsclone.chunk import Chunk, Result, dumps, loads_result
from fsclone.manifest import escape, read_manifest, unescape
from fsclone.state.record import PassStore
from tests.clirun import fsclone, fsclone_json
from tests.fstree import HOSTILE_NAMES, _lstat_tree, build_hostile_tree, snapshot

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="the hostile tree needs root: chown, mknod, trusted.* xattrs"
)

Pair = tuple[Path, Path, Path]  # source, target, state dir


@pytest.fixture
def base(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """The disk filesystem by default; tests marked for both also run on tmpfs."""
    if getattr(request, "param", "disk") == "disk":
        return tmp_path
    path = Path(tempfile.mkdtemp(prefix="fsclone-verify-", dir="/dev/shm"))
    request.addfinalizer(lambda: shutil.rmtree(path))
    return path


def copied(base: Path, make: Callable[[Path], None] = build_hostile_tree,
           **settings: Any) -> Pair:
    """A source tree and its copy made by ``fsclone pass copy``."""
    src, dst, state = base / "src", base / "dst", base / "state"
    src.mkdir()
    make(src)
    proc = fsclone("pass", "copy", src, dst, state=state, **settings)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return src, dst, state


@pytest.fixture
def pair(base: Path) -> Pair:
    return copied(base)


def verify(pair: Pair, *args: str, **settings: object) -> tuple[int, dict[str, Any]]:
    src, dst, state = pair
    return fsclone_json("pass", "verify", *args, src, dst, state=state, **settings)


def mismatches(pair: Pair, out: dict[str, Any]) -> dict[str, str]:
    """Every mismatch the pass recorded, read back from its pass record: path → message."""
    store = PassStore(pair[2] / out["pass"])
    try:
        return {e.path: e.message for e in store.errors() if e.op == "verify"}
    finally:
        store.close()


@contextlib.contextmanager
def same_times(*paths: Path) -> Iterator[None]:
    """Put back the atime and mtime of ``paths`` after a change, so that only the change shows."""
    saved = [(p, os.lstat(p)) for p in paths]
    yield
    for p, st in saved:
        if os.path.lexists(p):
            os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def non_dirs(root: Path) -> int:
    return sum(len(files) + sum(os.path.islink(os.path.join(d, s)) for s in subdirs)
               for d, subdirs, files in os.walk(root))


# -- a faithful copy -------------------------------------------------------------------------

@pytest.mark.parametrize("base", ["disk", "shm"], indirect=True)
def test_faithful_copy_verifies_clean(pair: Pair) -> None:
    rc, out = verify(pair, "--workers", "2")
    c = out["counters"]
    assert rc == 0, out
    assert c.get("mismatches", 0) == 0 and out["error_count"] == 0
    assert c["files_verified"] == non_dirs(pair[0])
    assert c["bytes_hashed"] > 2 * (200 << 10)
    rc, out = verify(pair, "--metadata-only")
    assert rc == 0 and out["notes"] == ["metadata only: no content read"]
    assert out["counters"].get("bytes_hashed", 0) == 0


@pytest.mark.parametrize("base", ["disk", "shm"], indirect=True)
def test_verify_changes_nothing_and_no_atime(pair: Pair) -> None:
    """Both trees are read in full (data, xattrs, symlinks) and come out as they were: no
    inode's ctime moves (nothing written), no atime moves but a symlink's, which readlink moves
    by a kernel rule (no O_NOATIME for links) and which only a write could put back."""
    trees = pair[:2]
    entries = [snapshot(root, atime=False) for root in trees]  # it puts link atimes back
    times = [_times(root) for root in trees]
    rc, out = verify(pair, "--workers", "2")
    assert rc == 0 and out["counters"]["bytes_hashed"] > 0
    assert [_times(root) for root in trees] == times
    assert [snapshot(root, atime=False) for root in trees] == entries


def _times(root: Path) -> dict[bytes, tuple[int, int | None]]:
    """ctime of every entry, atime of every entry but symlinks, read without touching any."""
    return {rel: (st.st_ctime_ns, None if stat.S_ISLNK(st.st_mode) else st.st_atime_ns)
            for rel, st in _lstat_tree(os.fsencode(root)).items()}


# -- every kind of difference ----------------------------------------------------------------

def _flip_byte(dst: Path) -> dict[str, str]:
    path = dst / "files/big"
    with same_times(path), open(path, "r+b") as f:
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0x01]))
    return {"files/big": "content differs"}


def _chmod(dst: Path) -> dict[str, str]:
    with same_times(dst / "files/small"):
        os.chmod(dst / "files/small", 0o600)
    return {"files/small": "mode 0o100640 != 0o100600"}


def _chown(dst: Path) -> dict[str, str]:
    with same_times(dst / "files/small"):
        os.chown(dst / "files/small", 4321, 8765)
    return {"files/small": "owner 1234:5678 != 4321:8765"}


def _xattr(dst: Path) -> dict[str, str]:
    with same_times(dst / "files/small"):
        os.setxattr(dst / "files/small", "user.binary", b"other")
    return {"files/small": "xattr 'user.binary' differs"}


def _acl(dst: Path) -> dict[str, str]:
    with same_times(dst / "files/acl"):
        subprocess.run(["setfacl", "-m", "u:1234:r", dst / "files/acl"], check=True)
    return {"files/acl": "ACL 'system.posix_acl_access' differs"}


def _mtime(dst: Path) -> dict[str, str]:
    st = os.lstat(dst / "files/small")
    os.utime(dst / "files/small", ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    return {"files/small": "mtime "}


def _symlink_target(dst: Path) -> dict[str, str]:
    """Same length, same owner, same times: only the target differs."""
    link = dst / "syms/relative"
    st = os.lstat(link)
    with same_times(dst / "syms"):
        link.unlink()
        os.symlink("../files/smalL", link)
        os.lchown(link, st.st_uid, st.st_gid)
        os.utime(link, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
    return {"syms/relative": "symlink target '../files/small' != '../files/smalL'"}


def _split_link(dst: Path) -> dict[str, str]:
    """links/b becomes a copy of links/a: same content and metadata, its own inode."""
    b, tmp = dst / "links/b", dst / "links/b.tmp"
    st = os.lstat(b)
    with same_times(dst / "links"):
        shutil.copy2(b, tmp)
        os.chown(tmp, st.st_uid, st.st_gid)
        os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.rename(tmp, b)
    return {"links/a": "hard links 2 != 1", "links/b": "hard links 2 != 1"}


def _split_across_dirs(dst: Path) -> dict[str, str]:
    """ro/tri-3 loses its link to links/tri-1 and nest/l1/tri-2 in other directories."""
    path = dst / "ro/tri-3"
    st = os.lstat(path)
    with same_times(dst / "ro"):
        shutil.copy2(path, dst / "ro/tmp")
        os.chown(dst / "ro/tmp", st.st_uid, st.st_gid)
        os.chmod(dst / "ro/tmp", stat.S_IMODE(st.st_mode))
        os.utime(dst / "ro/tmp", ns=(st.st_atime_ns, st.st_mtime_ns))
        os.rename(dst / "ro/tmp", path)
    return {"ro/tri-3": "hard links 3 != 1", "links/tri-1": "hard links 3 != 2",
            "nest/l1/tri-2": "hard links 3 != 2"}


def _missing_and_extra(dst: Path) -> dict[str, str]:
    with same_times(dst / "files", dst):
        (dst / "files/empty").unlink()
        (dst / "files/newcomer").write_bytes(b"not in the source\n")
        os.rmdir(dst / "emptydir")
    return {"files/empty": "missing in target", "files/newcomer": "extra in target",
            "emptydir": "missing in target"}


def _type(dst: Path) -> dict[str, str]:
    with same_times(dst / "files"):
        (dst / "files/empty").unlink()
        (dst / "files/empty").mkdir()
    return {"files/empty": "type file != directory"}


def _dir_mode(dst: Path) -> dict[str, str]:
    with same_times(dst / "nest/l1"):
        os.chmod(dst / "nest/l1", 0o700)
    return {"nest/l1": "mode 0o40755 != 0o40700"}


CHANGES = [_flip_byte, _chmod, _chown, _xattr, _acl, _mtime, _symlink_target, _split_link,
           _split_across_dirs, _missing_and_extra, _type, _dir_mode]


@pytest.mark.parametrize("change", CHANGES, ids=lambda f: f.__name__.strip("_"))
def test_difference_is_found(pair: Pair, change: Callable[[Path], dict[str, str]]) -> None:
    expected = change(pair[1])
    rc, out = verify(pair, "--workers", "2")
    assert rc == 1
    assert out["counters"]["mismatches"] == len(expected)
    assert out["error_count"] == 0  # a mismatch is not an error
    found = mismatches(pair, out)
    assert found.keys() == expected.keys(), found
    for path, words in expected.items():
        assert words in found[path]


def test_metadata_only_reads_no_content(pair: Pair) -> None:
    _flip_byte(pair[1])
    _chmod(pair[1])
    rc, out = verify(pair, "--metadata-only")
    assert rc == 1
    assert mismatches(pair, out) == {"files/small": "mode 0o100640 != 0o100600"}


def test_mismatch_lines_always_shown(pair: Pair) -> None:
    _chmod(pair[1])
    src, dst, state = pair
    proc = fsclone("pass", "verify", "--quiet", src, dst, state=state)
    assert proc.returncode == 1
    assert b"mismatch files/small: mode 0o100640 != 0o100600\n" in proc.stdout


# -- large files in ranges -------------------------------------------------------------------

RANGES: dict[str, Any] = {"large_file_size": 64 << 10, "range_size": 64 << 10}


def test_large_file_compared_in_ranges(base: Path) -> None:
    pair = copied(base, **RANGES)
    manifest = base / "manifest.tsv"
    rc, out = verify(pair, "--manifest", str(manifest), **RANGES)
    assert rc == 0, out
    data = (pair[0] / "files/big").read_bytes()
    rows = sorted((r for r in read_manifest(manifest) if r[0] == "files/big"), key=lambda r: r[4])
    assert [(r[4], r[5]) for r in rows] == [(0, 65536), (65536, 131072), (131072, 196608),
                                           (196608, len(data))]
    assert all(r[3] == xxhash.xxh3_128(data[r[4]:r[5]]).hexdigest() for r in rows)

    path = pair[1] / "files/big"
    with same_times(path), open(path, "r+b") as f:
        f.seek(150_000)
        f.write(b"!")
    rc, out = verify(pair, **RANGES)
    assert rc == 1
    assert mismatches(pair, out) == {"files/big": "content differs in bytes [131072, 196608)"}


# -- sampling --------------------------------------------------------------------------------

def _thousand_files(root: Path) -> None:
    for d in range(10):
        (root / f"d{d}").mkdir()
        for i in range(100):
            (root / f"d{d}" / f"f{i:03d}").write_bytes(b"%d\n" % i)


def _drawn(pair: Pair, seed: int, workers: int, where: Path) -> set[str]:
    rc, out = verify(pair, "--sample", "0.1", "--seed", str(seed), "--workers", str(workers),
                     "--manifest", str(where))
    assert rc == 0
    assert out["notes"] == [f"sampled: 10% of the files, drawn by --seed {seed}"]
    paths = {row[0] for row in read_manifest(where)}
    assert out["counters"]["files_verified"] == len(paths)
    return paths


def test_sample_is_reproducible_and_about_right(base: Path) -> None:
    pair = copied(base, _thousand_files)
    first = _drawn(pair, 1, 1, base / "m1.tsv")
    assert first == _drawn(pair, 1, 2, base / "m2.tsv")  # whatever the workers and order
    other = _drawn(pair, 2, 2, base / "m3.tsv")
    assert first != other
    for drawn in (first, other):
        assert 60 <= len(drawn) <= 140  # 100 expected, sd 9.5


def test_sample_still_finds_what_it_draws(base: Path) -> None:
    pair = copied(base, _thousand_files)
    drawn = _drawn(pair, 7, 2, base / "m.tsv")
    left_out = min({f"d0/f{i:03d}" for i in range(100)} - drawn)
    for rel in (min(drawn), left_out):
        target = pair[1] / rel
        with same_times(target):
            target.write_bytes(b"#" + target.read_bytes()[1:])
    rc, out = verify(pair, "--sample", "0.1", "--seed", "7")
    assert rc == 1 and mismatches(pair, out) == {min(drawn): "content differs"}


# -- the manifest ----------------------------------------------------------------------------

def test_manifest_holds_every_file_with_its_xxh128(pair: Pair, base: Path) -> None:
    manifest = base / "manifest.tsv"
    rc, out = verify(pair, "--manifest", str(manifest))
    assert rc == 0, out
    rows = list(read_manifest(manifest))
    src = pair[0]
    files = {os.path.relpath(os.path.join(d, f), src)
             for d, _, fs in os.walk(src) for f in fs if os.path.isfile(os.path.join(d, f))
             and not os.path.islink(os.path.join(d, f))}
    assert {r[0] for r in rows} == files and len(rows) == len(files)
    for path, size, mtime_ns, digest, start, end in rows:
        st = os.lstat(src / path)
        assert (size, mtime_ns, start, end) == (st.st_size, st.st_mtime_ns, 0, st.st_size)
        assert digest == xxhash.xxh3_128((src / path).read_bytes()).hexdigest()
    big = subprocess.run(["xxhsum", "-H2", src / "files/big"], capture_output=True, check=True)
    assert big.stdout.split()[0].decode() in {r[3] for r in rows if r[0] == "files/big"}


def test_manifest_escaping_round_trips() -> None:
    for raw in (*HOSTILE_NAMES, b"a\\x41", b"\x7f\x01\r", b"dir/\\\\n"):
        name = os.fsdecode(raw)
        text = escape(name)
        assert "\t" not in text and "\n" not in text and "\r" not in text
        text.encode("utf-8")  # no surrogates left
        assert unescape(text) == name
    assert escape(os.fsdecode(b"new\nline\xff\\")) == "new\\nline\\xff\\\\"


def test_manifest_refused_inside_a_tree_or_without_content(pair: Pair) -> None:
    src, dst, state = pair
    inside = fsclone("pass", "verify", "--manifest", dst / "m.tsv", src, dst, state=state)
    assert inside.returncode == 2 and not (dst / "m.tsv").exists()
    meta = fsclone("pass", "verify", "--metadata-only", "--manifest", "/tmp/m.tsv", src, dst,
                   state=state)
    assert meta.returncode == 2


def test_manifest_rows_cross_the_wire() -> None:
    row = (os.fsdecode(b"d/\xff\nname"), 10, 123, "ab" * 16, 0, 10)
    result = Result(chunk=Chunk(op="verify", path="d"), manifest=[row])
    assert loads_result(dumps(result)).manifest == [row]
