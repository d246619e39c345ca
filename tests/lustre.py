"""The Lustre a test plays with tests/lfs_standin.py (no Lustre runs here): a tmpfs for the
filesystem, the stand-in's files for its MDTs' changelogs, and the changes a test makes to SRC
with the records Lustre writes for them."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path

from fsclone.changes.clrecords import TYPES
from tests.mounts import tmpfs

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


@contextlib.contextmanager
def lustre_tree(tmp_path: Path) -> Iterator[tuple[Lustre, Path, Path, Path]]:
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


def build_tree(src: Path) -> None:
    for d in DIRS:
        (src / d).mkdir()
    for f in FILES:
        (src / f).write_bytes(f.encode(errors="surrogateescape") * 100)
    os.setxattr(src / "a" / "f1", "user.tag", b"1")


def every_change(fs: Lustre, src: Path, mount: Path) -> None:
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
