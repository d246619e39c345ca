"""Item errors as people and scripts read them: ``fsclone errors``, a pass's summary, ``--json``.

Where an error happened (the step of the item's work and the side, source or target, see
fsclone.fs.steps) is shown when known. A chunk that failed as a whole, a refusal and a record
written before errors knew their step have none: their JSON has no ``step`` and ``side`` keys,
and their ``fsclone errors`` line shows "-" in that column.
"""

from __future__ import annotations

import errno as errnos

from fsclone.chunk import ItemError
from fsclone.text import printable


def errno_name(number: int) -> str:
    """"ENOSPC (28)"; "-" for an error without an errno (a chunk that failed as a whole)."""
    return f"{errnos.errorcode.get(number, '?')} ({number})" if number else "-"


def where(e: ItemError) -> str:
    """"target xattr", "source read": the side and the step that failed; "" when unknown."""
    return " ".join(part for part in (e.side, e.step) if part)


def error_line(e: ItemError) -> str:
    """One line of ``fsclone errors``, tab-separated: where, path, op, errno, message."""
    return f"{where(e) or '-'}\t{printable(e.path)}\t{e.op}\t{errno_name(e.errno)}\t{e.message}"


def error_brief(e: ItemError) -> str:
    """An error in a pass's summary: "PATH: OP: [errno N] MESSAGE (target xattr)"."""
    at = where(e)
    line = f"{printable(e.path)}: {e.op}: [errno {e.errno}] {e.message}"
    return f"{line} ({at})" if at else line


def error_json(e: ItemError) -> dict[str, object]:
    out: dict[str, object] = {"path": printable(e.path), "op": e.op, "errno": e.errno,
                              "message": e.message}
    out.update((key, value) for key, value in (("step", e.step), ("side", e.side)) if value)
    return out
