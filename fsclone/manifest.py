"""The verify manifest: one TSV row per file checked, so a later verify or an outside tool can
compare. Workers may run on other nodes, so rows travel back in results and the coordinator's
process writes them as they arrive: memory stays flat, and no worker needs the file.

Format: UTF-8 text, one row per line, fields separated by a tab, the first line the header
``path size mtime_ns xxh3_128 start end``. ``path`` is relative to the source root and escaped
so that any name fits on one line and reads back exactly: backslash as ``\\\\``, tab ``\\t``,
newline ``\\n``, carriage return ``\\r``, any other control character and every byte that is not
part of valid UTF-8 as ``\\xHH``. ``xxh3_128`` is the lowercase hex digest (as ``xxhsum -H2``
prints it) of the source's bytes [start, end): the whole file (start 0, end its size), or, for a
file hashed in ranges, one row per range. Rows come in no particular order.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import TextIO

from fsclone.chunk import ManifestRow
from fsclone.errors import UsageError

HEADER = ("path", "size", "mtime_ns", "xxh3_128", "start", "end")
_NAMED = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}
_UNNAMED = {v: k for k, v in _NAMED.items()}
_SPECIAL = re.compile("[\\\\\x00-\x1f\x7f\udc80-\udcff]")
_ESCAPE = re.compile(rb"\\(x[0-9a-fA-F]{2}|[\\tnr])")


def _escape_char(m: re.Match[str]) -> str:
    ch = m.group()
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    return f"\\x{code - 0xDC00 if code >= 0xDC80 else code:02x}"


def escape(path: str) -> str:
    """A path (``os`` style, undecodable bytes as surrogates) as one line of UTF-8 text."""
    return _SPECIAL.sub(_escape_char, path)


def unescape(text: str) -> str:
    """The inverse of :func:`escape`."""
    def byte(m: re.Match[bytes]) -> bytes:
        code = m.group(1)
        if code[:1] == b"x":
            return bytes([int(code[1:], 16)])
        return _UNNAMED["\\" + code.decode()].encode()

    return os.fsdecode(_ESCAPE.sub(byte, text.encode()))


def format_row(row: ManifestRow) -> str:
    path, size, mtime_ns, digest, start, end = row
    return f"{escape(path)}\t{size}\t{mtime_ns}\t{digest}\t{start}\t{end}\n"


def parse_row(line: str) -> ManifestRow:
    path, size, mtime_ns, digest, start, end = line.rstrip("\n").split("\t")
    return unescape(path), int(size), int(mtime_ns), digest, int(start), int(end)


def read_manifest(path: str | Path) -> Iterator[ManifestRow]:
    """The rows of a manifest file (its header checked and skipped)."""
    with open(path, encoding="utf-8") as f:
        if f.readline().rstrip("\n").split("\t") != list(HEADER):
            raise UsageError(f"{path} is not an fsclone manifest")
        for line in f:
            yield parse_row(line)


def check_location(path: str, roots: tuple[str, ...], what: str = "the manifest") -> None:
    """Refuse a file fsclone writes (``what``: a manifest, the log) inside a pass root: the
    pass would find it there."""
    where = os.path.realpath(path)
    for root in roots:
        top = os.path.realpath(root).rstrip("/") + "/"
        if where.startswith(top):
            raise UsageError(f"{what} {path} must not be inside {root}")


class ManifestWriter:
    """Writes rows as they arrive; the file holds the header from the start."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._file: TextIO | None = None

    def __enter__(self) -> ManifestWriter:
        self._file = open(self.path, "w", encoding="utf-8", newline="\n")
        self._file.write("\t".join(HEADER) + "\n")
        return self

    def write(self, rows: list[ManifestRow]) -> None:
        assert self._file is not None
        self._file.writelines(format_row(row) for row in rows)

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._file is not None:
            self._file.close()
