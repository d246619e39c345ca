"""The Lustre changelog feed end to end, with ``lfs`` played by tests/lfs_standin.py (no Lustre
runs here): a real tmpfs SRC is changed, each change written to the stand-in's changelog as
Lustre records it, and ``pass sync --changes`` brings DST to what rsync calls the same; the
records are cleared only once that pass is done, a gap or a deregistered changelog user sends
the pair back to a full sync."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fsclone.changes.changelog import ChangelogFeed
from fsclone.changes.clrecords import TYPES
from fsclone.changes.feed import DirtyDir, FeedGap
from tests.clirun import fsclone, fsclone_env
from tests.fstree import assert_rsync_clean, assert_same_tree
from tests.midpass import held
from tests.mounts import tmpfs
from tests.services import wait_for

STANDIN = Path(__file__).with_name("lfs_standin.py")
#: two MDTs (DNE): the records of a directory's entries are those of its MDT's changelog
MDTS = ("testfs-MDT0000", "testfs-MDT0001")
MDT = MDTS[0]
USER = "cl1"
ZERO = "0x0:0x0:0x0"


class Lustre:
    """The stand-in's files, and the changes a test makes to SRC with the records Lustre
    would write for them. A FID is its object's inode number, so fid2path answers with the
    paths the inode has now (every link), as Lustre does. Directories named ``deep`` or
    ``quiet`` are on the second MDT, as ``lfs mkdir -i 1`` would place them."""

    def __init__(self, where: Path, mount: Path) -> None:
        self.where, self.mount = where, mount
        where.mkdir()
        (where / "users.json").write_text(json.dumps({m: {USER: 0} for m in MDTS}))
        self.last = dict.fromkeys(MDTS, 0)
        for mdt in MDTS:
            (where / f"{mdt}.log").write_bytes(b"")
            self.record("MARK", ZERO, b" p=[" + ZERO.encode() + b"] mdd_obd-" + mdt.encode()
                        + b"-0", mdt=mdt)

    @property
    def lfs(self) -> str:
        return shlex.join([sys.executable, str(STANDIN), str(self.where)])

    def settings(self) -> dict[str, str]:
        return {"lfs": self.lfs, "changelog_users": self.users}

    @property
    def users(self) -> str:
        return ",".join(f"{mdt}={USER}" for mdt in MDTS)

    @staticmethod
    def mdt_of(directory: Path) -> str:
        return MDTS[1] if directory.name in ("deep", "quiet") else MDTS[0]

    def fid(self, path: Path) -> str:
        return f"0x200000400:0x{os.lstat(path).st_ino:x}:0x0"

    def tables(self) -> None:
        """fid2path's table: every inode below the mount, with its paths."""
        table: dict[str, list[str]] = {}
        for top, dirs, files in os.walk(self.mount):
            for name in [*dirs, *files] if top != str(self.mount) else [".", *dirs, *files]:
                path = Path(top) / name if name != "." else Path(top)
                rel = "" if path == self.mount else os.fsdecode(path.relative_to(self.mount))
                table.setdefault(self.fid(path), []).append(rel)
        (self.where / "fids.json").write_text(json.dumps(table))

    def record(self, kind: str, target: str, tail: bytes = b"", flags: int = 0,
               mdt: str = MDT) -> int:
        self.last[mdt] += 1
        line = (f"{self.last[mdt]} {TYPES.index(kind):02d}{kind:<5} 12:00:00.000000001 "
                f"2026.12.02 0x{flags:x} t=[{target}] ef=0xf u=0:0 nid=0@lo").encode() + tail
        with open(self.where / f"{mdt}.log", "ab") as log:
            log.write(line + b"\0")
        return self.last[mdt]

    def _named(self, kind: str, path: Path, target: str | None = None, flags: int = 0) -> int:
        tail = b" p=[" + self.fid(path.parent).encode() + b"] " + os.fsencode(path.name)
        return self.record(kind, target or self.fid(path), tail, flags, self.mdt_of(path.parent))

    def _of(self, kind: str, path: Path, tail: bytes = b"") -> int:
        """A record of an object's data or attributes: no parent, as an older server writes."""
        return self.record(kind, self.fid(path), tail, mdt=self.mdt_of(path.parent))

    # -- changes to SRC, each with its records ------------------------------------------------
    def create(self, path: Path, data: bytes = b"new") -> None:
        path.write_bytes(data)
        self._named("CREAT", path)
        self._of("CLOSE", path, b" m=-w-")  # no p=: the feed resolves t=

    def mkdir(self, path: Path) -> None:
        path.mkdir()
        self._named("MKDIR", path)

    def symlink(self, path: Path, to: str) -> None:
        path.symlink_to(to)
        self._named("SLINK", path)

    def mkfifo(self, path: Path) -> None:
        os.mkfifo(path)
        self._named("MKNOD", path)

    def link(self, existing: Path, path: Path) -> None:
        os.link(existing, path)
        self._named("HLINK", path)

    def unlink(self, path: Path) -> None:
        target, last = self.fid(path), os.lstat(path).st_nlink == 1
        path.unlink()
        self._named("UNLNK", path, target, flags=int(last))

    def rmdir(self, path: Path) -> None:
        target = self.fid(path)
        path.rmdir()
        self._named("RMDIR", path, target)

    def rename(self, old: Path, new: Path) -> None:
        overwritten = self.fid(new) if os.path.lexists(new) else ZERO
        source, old_parent = self.fid(old), self.fid(old.parent)
        old.rename(new)
        self.record("RENME", overwritten,
                    b" p=[" + self.fid(new.parent).encode() + b"] " + os.fsencode(new.name)
                    + b" s=[" + source.encode() + b"] sp=[" + old_parent.encode() + b"] "
                    + os.fsencode(old.name), flags=int(overwritten != ZERO),
                    mdt=self.mdt_of(new.parent))

    def append(self, path: Path, data: bytes) -> None:
        with open(path, "ab") as f:
            f.write(data)
        self._of("CLOSE", path, b" m=-w-")

    def truncate(self, path: Path, size: int) -> None:
        os.truncate(path, size)
        self._of("TRUNC", path)

    def chmod(self, path: Path, mode: int) -> None:
        path.chmod(mode)
        self._of("SATTR", path)

    def setxattr(self, path: Path, name: str, value: bytes) -> None:
        os.setxattr(path, name, value, follow_symlinks=False)
        self._of("XATTR", path, b" x=" + name.encode())

    def clears(self) -> list[str]:
        """Every ``changelog_clear`` run, as "MDT USER ENDREC"."""
        log = self.where / "clears.log"
        return log.read_text().splitlines() if log.exists() else []

    def cleared(self) -> dict[str, int]:
        """The last record the changelog user cleared, per MDT."""
        users = json.loads((self.where / "users.json").read_text())
        return {mdt: int(users[mdt][USER]) for mdt in MDTS}

    def deregister(self) -> None:
        """What ``changelog_deregister`` (or the MDT's garbage collection) does."""
        users = json.loads((self.where / "users.json").read_text())
        (self.where / "users.json").write_text(json.dumps({**users, MDT: {}}))

    def lose(self, index: int) -> None:
        """Record ``index`` of the first MDT purged from its log (as if cleared by a user
        taking our name)."""
        log = self.where / f"{MDT}.log"
        records = log.read_bytes().split(b"\0")[:-1]
        log.write_bytes(b"".join(r + b"\0" for r in records
                                 if not r.startswith(f"{index} ".encode())))


@pytest.fixture
def lustre(tmp_path: Path) -> Iterator[tuple[Lustre, Path, Path, Path]]:
    """The stand-in over a tmpfs, SRC two levels below its mount point, DST and a state
    directory elsewhere."""
    with tmpfs(tmp_path / "lustre", "64m") as mount:
        src = mount / "proj" / "src"
        src.mkdir(parents=True)
        (mount / "other").mkdir()
        yield Lustre(tmp_path / "standin", mount), src, tmp_path / "dst", tmp_path / "state"


DIRS = ("a", "a/deep", "moved", "moved/sub", "empty", "away", "quiet", "gone", "swap",
        "caf\udce9")
FILES = ("a/f1", "a/deep/f2", "moved/inner", "moved/sub/leaf", "away/f", "quiet/data", "gone/x",
         "swap/old", "caf\udce9/\udcff", "over", "links", "big")


def _tree(src: Path) -> None:
    for d in DIRS:
        (src / d).mkdir()
    for f in FILES:
        (src / f).write_bytes(f.encode(errors="surrogateescape") * 100)
    os.setxattr(src / "a" / "f1", "user.tag", b"1")


def _changes(fs: Lustre, src: Path, mount: Path) -> None:
    """Every kind of change, each recorded as Lustre would."""
    fs.create(src / "a" / "new file")
    fs.create(src / "caf\udce9" / "n\udce9w")
    fs.create(src / "two\nlines")
    fs.mkdir(src / "fresh")
    fs.create(src / "fresh" / "inside")
    fs.symlink(src / "a" / "sym", "../over")
    fs.mkfifo(src / "a" / "fifo")
    fs.link(src / "links", src / "a" / "deep" / "hard")
    fs.rename(src / "moved", src / "empty")                   # a directory over an empty one
    fs.rename(src / "away", src / "a" / "renamed dir")        # a directory to a new parent
    fs.rename(src / "a" / "f1", src / "over")                  # over an existing target
    fs.unlink(src / "gone" / "x")
    fs.rmdir(src / "gone")
    fs.unlink(src / "swap" / "old")
    fs.rmdir(src / "swap")
    fs.create(src / "swap")                                    # a directory became a file
    fs.append(src / "big", b"more")
    fs.append(src / "quiet" / "data", b"more")                # its directory changed no name
    fs.truncate(src / "a" / "deep" / "f2", 3)
    fs.chmod(src / "a" / "deep", 0o700)
    fs.chmod(src / "a" / "deep" / "hard", 0o600)
    fs.setxattr(src / "links", "user.tag", b"2")
    fs.record("SATTR", ZERO)  # no object: nothing to resolve
    fs.create(mount / "other" / "outside SRC")
    fs.tables()


def _sync(src: Path, dst: Path, state: Path, fs: Lustre,
          *flags: str) -> subprocess.CompletedProcess[bytes]:
    return fsclone("pass", "sync", *flags, "--workers", "2", src, dst, state=state,
                   lfs=fs.lfs, changelog_users=fs.users)


def _synced_once(fs: Lustre, src: Path, dst: Path, state: Path) -> None:
    _tree(src)
    fs.tables()
    done = _sync(src, dst, state, fs)
    assert done.returncode == 0, done.stderr.decode()
    # the full pass read every changelog to its record 1, and cleared it
    assert fs.clears() == [f"{mdt} {USER} 1" for mdt in MDTS]
    assert fs.cleared() == dict.fromkeys(MDTS, 1)


def test_changes_from_the_changelog_make_dst_faithful(
        lustre: tuple[Lustre, Path, Path, Path]) -> None:
    fs, src, dst, state = lustre
    _synced_once(fs, src, dst, state)
    _changes(fs, src, src.parent.parent)
    done = _sync(src, dst, state, fs, "--changes")
    assert done.returncode == 0, done.stderr.decode()
    assert_same_tree(src, dst)
    assert_rsync_clean(src, dst)
    assert not (dst / "other").exists() and not (dst.parent / "other").exists()
    assert fs.last[MDTS[1]] > 1  # both changelogs had records
    assert fs.cleared() == fs.last  # cleared once the pass was done
    again = _sync(src, dst, state, fs, "--changes")  # nothing new: nothing to do
    assert again.returncode == 0, again.stderr.decode()


def test_records_are_cleared_only_after_their_work_is_done(
        lustre: tuple[Lustre, Path, Path, Path]) -> None:
    fs, src, dst, state = lustre
    _synced_once(fs, src, dst, state)
    fs.create(src / "a" / "held", os.urandom(1 << 20))
    fs.tables()
    with held(src / "a" / "held") as lease:
        run = subprocess.Popen(
            [sys.executable, "-m", "fsclone", "pass", "sync", "--changes", "--workers", "2",
             str(src), str(dst)], env=fsclone_env(state, **fs.settings()),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_for(lease.breaking, 60, "the pass to open the held file")
        os.killpg(run.pid, signal.SIGKILL)
        run.wait(30)
    assert fs.cleared() == dict.fromkeys(MDTS, 1)  # killed before done: nothing more cleared
    assert not (dst / "a" / "held").exists()
    done = _sync(src, dst, state, fs, "--changes")  # does what the killed pass took again
    assert done.returncode == 0, done.stderr.decode()
    assert_same_tree(src, dst)
    assert fs.cleared() == fs.last


@pytest.mark.parametrize("loss", ["gap", "deregistered"])
def test_lost_records_send_the_pair_back_to_a_full_sync(
        lustre: tuple[Lustre, Path, Path, Path], loss: str) -> None:
    fs, src, dst, state = lustre
    _synced_once(fs, src, dst, state)
    fs.create(src / "a" / "one")
    lost = fs.last[MDT]
    fs.create(src / "a" / "two")
    fs.tables()
    if loss == "gap":
        fs.lose(lost)
    else:
        fs.deregister()
    refused = _sync(src, dst, state, fs, "--changes")
    assert refused.returncode == 2
    said = refused.stderr.decode()
    assert "events were lost" in said and "run a full pass sync" in said, said
    assert ("records are missing" if loss == "gap" else "is gone (deregistered)") in said
    if loss == "deregistered":  # the admin registers it again, at the current record
        users = json.loads((fs.where / "users.json").read_text())
        (fs.where / "users.json").write_text(json.dumps({**users, MDT: {USER: fs.last[MDT]}}))
    full = _sync(src, dst, state, fs)
    assert full.returncode == 0, full.stderr.decode()
    assert_same_tree(src, dst)
    fs.create(src / "a" / "three")
    fs.tables()
    done = _sync(src, dst, state, fs, "--changes")
    assert done.returncode == 0, done.stderr.decode()
    assert_same_tree(src, dst)
    assert_rsync_clean(src, dst)


def test_the_feed_reads_from_its_cursor_and_says_a_gap(
        lustre: tuple[Lustre, Path, Path, Path]) -> None:
    fs, src, _, _ = lustre
    (src / "d").mkdir()
    fs.tables()
    users = dict.fromkeys(MDTS, USER)
    feed = ChangelogFeed(shlex.split(fs.lfs), users, str(src), None)
    cursor = feed.mark()
    assert json.loads(cursor) == {mdt: [1, 0] for mdt in MDTS}
    fs.mkdir(src / "d" / "e")
    fs.create(src.parent.parent / "other" / "x")
    fs.mkdir(src.parent / "src2")  # a sibling whose name starts with SRC's
    fs.create(src.parent / "src2" / "x")
    fs.tables()
    again = ChangelogFeed(shlex.split(fs.lfs), users, str(src), cursor)
    assert again.read(0) == [DirtyDir(b"d", False), DirtyDir(b"d/e", True)]
    assert again.read(0) == []  # read past already, not yet cleared
    assert fs.clears() == [] and fs.cleared() == dict.fromkeys(MDTS, 0)
    again.commit(again.cursor())
    assert fs.clears() == [f"{mdt} {USER} {fs.last[mdt]}" for mdt in MDTS]
    assert fs.cleared() == fs.last
    fs.create(src / "d" / "f")
    fs.create(src / "d" / "g")
    fs.lose(fs.last[MDT] - 1)
    with pytest.raises(FeedGap, match="records are missing"):
        again.read(0)
