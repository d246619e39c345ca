"""The list of HSM-released files a pass left unread (``--released skip``): ``released.txt`` in
the pass's state directory, paths relative to SRC, sorted, in the form ``--files-from`` reads
(fsclone.engine.listed). A site recalls them in tape order with its own tools, then copies them
with ``fsclone pass copy --files-from`` that file.

One path a line, a path starting with ``#`` or ``;`` written ``./PATH`` (a comment otherwise);
when a path holds a newline or ends in a carriage return, which no line can hold, the whole
list is NUL-separated instead (``--files-from`` tells the two forms apart by looking)."""

from __future__ import annotations

from pathlib import Path

from fsclone.state.directory import write_private

NAME = "released.txt"


def write(pass_dir: Path, paths: list[bytes]) -> Path:
    """Replace the list in ``pass_dir`` with ``paths`` (sorted, as bytes), complete or not at
    all; returns its path."""
    entries = [b"./" + p if p[:1] in (b"#", b";") else p for p in paths]
    nul = any(b"\n" in p or p.endswith(b"\r") for p in paths)
    data = b"".join(p + (b"\0" if nul else b"\n") for p in entries)
    path = pass_dir / NAME
    write_private(path, data)
    return path
