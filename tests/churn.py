"""A writer that keeps changing a tree the way users do, for the watcher's tests and bench.

Every kind of change a mirror must follow: files created, appended to, truncated, renamed
(within and across directories), removed; whole directories made, renamed (moved elsewhere
in the tree) and removed; modes, xattrs and ACLs changed on files and directories; a name's
type swapped (file to directory, directory to file, file to symlink); hard links made in the
same directory and across directories. Chosen from a seeded random generator, so a run can be
repeated, at a paced rate of changes per second.
"""

from __future__ import annotations

import os
import random
import shutil
import struct
import time
from collections.abc import Callable
from pathlib import Path

#: system.posix_acl_access: version 2, then (tag, perm, id) entries
_ACL_VERSION = 2
_USER_OBJ, _USER, _GROUP_OBJ, _MASK, _OTHER = 0x01, 0x02, 0x04, 0x10, 0x20
_NO_ID = 0xFFFFFFFF


def acl_blob(uid: int, perm: int) -> bytes:
    """An access ACL granting user ``uid`` ``perm`` (rwx bits), as setfacl writes it."""
    entries = [(_USER_OBJ, 6, _NO_ID), (_USER, perm, uid), (_GROUP_OBJ, 4, _NO_ID),
               (_MASK, 7, _NO_ID), (_OTHER, 4, _NO_ID)]
    return struct.pack("<I", _ACL_VERSION) + b"".join(struct.pack("<HHI", *e) for e in entries)


class Churn:
    """Changes below ``root`` (made if missing); :meth:`step` makes one."""

    def __init__(self, root: Path, seed: int) -> None:
        self.root = root
        self.rng = random.Random(seed)
        self.serial = 0
        root.mkdir(exist_ok=True)
        self.ops: list[Callable[[], None]] = [
            self.create, self.create, self.append, self.truncate, self.rename_file,
            self.rename_file, self.remove_file, self.make_dir, self.make_dir, self.move_dir,
            self.remove_dir, self.chmod, self.set_xattr, self.set_acl, self.swap_type,
            self.hard_link, self.hard_link,
        ]

    def _name(self, prefix: str) -> str:
        self.serial += 1
        return f"{prefix}{self.serial}"

    def _dirs(self) -> list[Path]:
        found = [self.root]
        for top, dirs, _ in os.walk(self.root):
            found += [Path(top) / d for d in dirs]
        return found

    def _files(self) -> list[Path]:
        return [Path(top) / f for top, _, files in os.walk(self.root) for f in files
                if not os.path.islink(Path(top) / f)]

    def _dir(self) -> Path:
        return self.rng.choice(self._dirs())

    def _file(self) -> Path | None:
        files = self._files()
        return self.rng.choice(files) if files else None

    def step(self) -> None:
        """One change; one whose target vanished under it (none left) is skipped."""
        self.rng.choice(self.ops)()

    def run(self, changes: int, rate: float) -> None:
        """``changes`` changes at ``rate`` a second."""
        start = time.monotonic()
        for i in range(changes):
            self.step()
            ahead = start + (i + 1) / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)

    def create(self) -> None:
        (self._dir() / self._name("f")).write_bytes(self.rng.randbytes(self.rng.randrange(4096)))

    def append(self) -> None:
        if (f := self._file()) is not None:
            with open(f, "ab") as out:
                out.write(self.rng.randbytes(self.rng.randrange(1, 2048)))

    def truncate(self) -> None:
        if (f := self._file()) is not None:
            os.truncate(f, self.rng.randrange(f.stat().st_size + 1))

    def rename_file(self) -> None:
        if (f := self._file()) is not None:
            f.rename(self._dir() / self._name("r"))

    def remove_file(self) -> None:
        if (f := self._file()) is not None:
            f.unlink()

    def make_dir(self) -> None:
        d = self._dir() / self._name("d")
        d.mkdir()
        for _ in range(self.rng.randrange(4)):
            (d / self._name("f")).write_bytes(self.rng.randbytes(100))

    def move_dir(self) -> None:
        dirs = self._dirs()[1:]
        if not dirs:
            return
        moved = self.rng.choice(dirs)
        into = [d for d in self._dirs() if d != moved and moved not in d.parents]
        moved.rename(self.rng.choice(into) / self._name("m"))

    def remove_dir(self) -> None:
        dirs = self._dirs()[1:]
        if len(dirs) > 3:
            shutil.rmtree(self.rng.choice(dirs))

    def chmod(self) -> None:
        target = self.rng.choice([*self._dirs()[1:], *self._files()] or [self.root])
        os.chmod(target, (0o700 if target.is_dir() else 0o600) | self.rng.choice((0, 0o55, 0o44)))

    def set_xattr(self) -> None:
        target = self.rng.choice([*self._dirs(), *self._files()])
        os.setxattr(target, f"user.k{self.rng.randrange(3)}", self.rng.randbytes(8))

    def set_acl(self) -> None:
        target = self.rng.choice([*self._dirs()[1:], *self._files()] or [self.root])
        os.setxattr(target, "system.posix_acl_access",
                    acl_blob(1000 + self.rng.randrange(3), self.rng.choice((4, 5, 7))))

    def swap_type(self) -> None:
        """A name that was a file becomes a directory, a symlink, or the reverse."""
        kind = self.rng.randrange(3)
        if kind == 0 and (f := self._file()) is not None:
            f.unlink()
            f.mkdir()
            (f / "inside").write_bytes(b"now a directory")
        elif kind == 1 and (f := self._file()) is not None:
            f.unlink()
            f.symlink_to(self._name("target"))
        elif kind == 2 and len(dirs := self._dirs()) > 1:
            d = self.rng.choice(dirs[1:])
            shutil.rmtree(d)
            d.write_bytes(b"now a file")

    def hard_link(self) -> None:
        """Another name for a file: beside it, or in another directory."""
        if (f := self._file()) is not None:
            where = f.parent if self.rng.randrange(2) else self._dir()
            os.link(f, where / self._name("h"))
