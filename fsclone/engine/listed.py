"""``--files-from FILE``: a copy of exactly the paths a list names, as non-recursive chunks.

The list is read as rsync reads it: one path per line, or NUL-separated when the file holds a
NUL byte (rsync's ``--from0``, found by looking instead of by a flag); empty entries and those
starting with ``#`` or ``;`` are ignored (list such a name as ``./#name``), and a newline list's
trailing carriage returns dropped. A path is relative to SRC (leading ``./`` dropped), or
absolute below SRC; a directory is made with its metadata but not walked, and ``DIR/`` (or
``DIR/.``) takes its entries too, one level. Every directory on the way to a listed path is
made with the source's metadata (rsync's implied directories).

Refused, with one line and nothing written: a path outside SRC (absolute elsewhere, or
holding ``..``), rsync's ``/./`` marker, and a path whose directories on the way are not
directories in the source (a symlink among them). A listed entry missing from the source is
an item error of the pass. The workers open every path without following symlinks all the
same, so a directory swapped for a link after these checks takes them nowhere.

Chunks: one per directory with listed entries (its files, symlinks and specials, in slices of
``dir_slice``; none for a directory only made), marked ``listed`` so that the worker makes the
directory's path if the target lacks it and walks into nothing. Each directory's ``dirmeta``
waits, in a barrier, for its own chunks and for the ``dirmeta`` of each directory below it, so
times are set bottom-up once nothing more is written there.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass, field

from fsclone.chunk import Chunk, Group, new_id
from fsclone.engine.retry import Seed
from fsclone.errors import UsageError
from fsclone.text import printable

_COMMENTS = (b"#", b";")


def identity(path: str) -> str:
    """What the pass keeps of the list: ``SHA256:PATH``. A resume is asked with the same
    content (fsclone.options compares the digest alone)."""
    return f"{_digest(_read(path))}:{os.path.abspath(path)}"


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise UsageError(f"--files-from {path}: {exc.strerror or exc}") from None


def entries(data: bytes) -> list[bytes]:
    """The list's entries, as rsync takes them."""
    nul = b"\0" in data
    raw = data.split(b"\0") if nul else [line.removesuffix(b"\r") for line in data.split(b"\n")]
    return [e for e in raw if e and not e.startswith(_COMMENTS)]


@dataclass
class _Dir:
    """One directory of the seed: the names listed in it, and its subdirectories."""

    names: set[str] = field(default_factory=set)
    subdirs: set[str] = field(default_factory=set)


def listed_seed(kept: str, src: str, given_src: str, dir_slice: int) -> Seed:
    """The chunks and barriers of a pass over the list the spec keeps (``kept``, see
    :func:`identity`), below the resolved SRC ``src`` (``given_src``: as the command named
    it, for absolute paths). Refuses a list that changed since the pass started."""
    digest, _, path = kept.partition(":")
    data = _read(path)
    if _digest(data) != digest:
        raise UsageError(f"--files-from {path} changed since the pass started (its sha256 is "
                         "another): run it with --restart, or put the list back")
    tree = _Tree(src, (src, os.path.abspath(given_src)))
    for entry in entries(data):
        tree.add(os.fsdecode(entry))
    return tree.seed(dir_slice)


class _Tree:
    """The directories a list touches, checked against the source as the list is read."""

    def __init__(self, src: str, prefixes: tuple[str, ...]) -> None:
        self.src = src
        self.prefixes = prefixes
        self.dirs: dict[str, _Dir] = {"": _Dir()}

    def add(self, entry: str) -> None:
        rel, contents = self._relative(entry)
        parts = rel.split("/") if rel else []
        here = ""
        for part in parts[:-1]:
            here = self._subdir(here, part, entry)
        if parts:
            st = self._lstat(rel)
            if st is not None and stat.S_ISDIR(st.st_mode):
                here = self._subdir(here, parts[-1], entry)
            else:
                self.dirs[here].names.add(parts[-1])
                if contents:
                    raise UsageError(f"--files-from: {printable(entry)} is not a directory "
                                     "in the source")
                return
        if contents:
            self._contents(here)

    def _relative(self, entry: str) -> tuple[str, bool]:
        """The entry as a path relative to SRC, and whether its directory's entries are
        asked for too (a trailing ``/`` or ``/.``)."""
        if entry.startswith("/"):
            under = [p for p in self.prefixes if entry == p or entry.startswith(p + "/")]
            if not under:
                raise UsageError(f"--files-from: {printable(entry)} is not below the source "
                                 f"{printable(self.src)}")
            entry = entry[len(under[0]):]
        contents = entry == "." or entry.endswith(("/", "/."))
        parts = [p for p in entry.split("/") if p]
        while parts and parts[0] == ".":
            parts.pop(0)
        if parts and parts[-1] == ".":
            parts.pop()
        for part in parts:
            if part == "..":
                raise UsageError(f"--files-from: {printable(entry)} leaves the source (..)")
            if part == ".":
                raise UsageError(f"--files-from: {printable(entry)}: rsync's /./ marker is "
                                 "not taken; list the path from SRC")
        return "/".join(parts), contents

    def _subdir(self, parent: str, name: str, entry: str) -> str:
        path = f"{parent}/{name}" if parent else name
        if path in self.dirs:
            return path
        st = self._lstat(path)
        if st is not None and not stat.S_ISDIR(st.st_mode):
            raise UsageError(f"--files-from: {printable(entry)}: {printable(path)} is not a "
                             "directory in the source (a symlink?): refused")
        self.dirs[parent].subdirs.add(name)
        self.dirs[path] = _Dir()
        return path

    def _lstat(self, rel: str) -> os.stat_result | None:
        try:
            return os.lstat(os.path.join(self.src, rel))
        except FileNotFoundError:
            return None  # missing: an item error of the pass, once a worker looks
        except OSError as exc:
            raise UsageError(f"--files-from: {printable(rel)}: {exc.strerror}") from None

    def _contents(self, path: str) -> None:
        """``DIR/``: the directory's entries too, its subdirectories made, not walked."""
        try:
            with os.scandir(os.path.join(self.src, path)) as it:
                found = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
        except OSError as exc:
            raise UsageError(f"--files-from: {printable(path or '.')}: "
                             f"{exc.strerror}") from None
        for name, is_dir in found:
            if is_dir:
                self._subdir(path, name, f"{path}/{name}")
            else:
                self.dirs[path].names.add(name)

    def seed(self, dir_slice: int) -> Seed:
        chunks: list[Chunk] = []
        groups: list[Group] = []
        ids = {path: new_id() for path in self.dirs}
        for path, d in self.dirs.items():
            parent = path.rpartition("/")[0] if path else None
            names = sorted(d.names)
            slices = [tuple(names[i:i + dir_slice]) for i in range(0, len(names), dir_slice)]
            members = slices or [()]
            chunks += [Chunk(op="copy", path=path, names=s, group=ids[path],
                             args={"listed": True}) for s in members]
            then = Chunk(op="dirmeta", path=path,
                         group=ids[parent] if parent is not None else None)
            groups.append(Group(ids[path], len(members) + len(d.subdirs), then))
        return Seed(chunks, groups)

