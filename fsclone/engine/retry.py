"""``--retry-errors ID``: seed a new pass with the items pass ID listed as failed, not the root.

A failed entry is re-run as its parent directory restricted to its name (a failed directory
entry is created and walked again whole); a failed ``dirmeta`` is re-run as such. The entries of
one directory share a barrier whose ``dirmeta`` chunk gives the directory its times back once
they are written, as a split directory's slices do. An error on the root itself means the whole
tree must be walked again, so the seed is the root.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from fsclone.chunk import Chunk, Group, ItemError, new_id
from fsclone.errors import MessageError, UsageError
from fsclone.schema import validate_name, validate_relpath
from fsclone.state.directory import pass_dir
from fsclone.state.queries import read_errors, read_record

#: ops whose errors a copy pass cannot redo: the cleanup phase runs again anyway, and deletions
#: belong to delete and sync passes
_NOT_RETRIED = {"cleanup", "unlink", "delete", "count", "prune", "rmdir", "mtime", "verify",
                "scan"}
_ROOTS = {"", "."}


@dataclass(frozen=True)
class Seed:
    """What a pass starts its walk from, instead of the root chunk."""

    chunks: list[Chunk]
    groups: list[Group]


def retry_roots(state_dir: Path, pass_id: str, src: str | None, dst: str | None) -> tuple[str, str]:
    """The roots of pass ``pass_id``; roots given on the command line must be the same."""
    spec = read_record(pass_dir(state_dir, pass_id)).spec
    for given, kept in ((src, spec.src), (dst, spec.dst)):
        if given is not None and Path(given).resolve() != Path(kept):
            raise UsageError(f"--retry-errors {pass_id} runs on that pass's roots "
                             f"{spec.src} -> {spec.dst}; leave SRC and DST out")
    return spec.src, spec.dst


def retry_seed(state_dir: Path, pass_id: str, op: str, dir_slice: int) -> Seed:
    return seed_for(read_errors(state_dir / pass_id), op, dir_slice)


def seed_for(errors: Iterable[ItemError], op: str, dir_slice: int) -> Seed:
    """Chunks (and their barriers) that redo exactly the failed items, in ``op``."""
    names: dict[str, set[str]] = {}
    metas: set[str] = set()
    for err in errors:
        if err.op in _NOT_RETRIED:
            continue
        try:
            path = validate_relpath("" if err.path in _ROOTS else err.path)
        except MessageError:
            continue  # not a path below the roots (cannot happen for errors fsclone recorded)
        if err.op == "dirmeta":
            metas.add(path)
        elif not path:
            return Seed([Chunk(op=op, path="")], [])
        else:
            parent, _, name = path.rpartition("/")
            names.setdefault(parent, set()).add(validate_name(name))
    chunks: list[Chunk] = []
    groups: list[Group] = []
    for parent, members in sorted(names.items()):
        ordered = sorted(members)
        group = new_id()
        slices = [tuple(ordered[i:i + dir_slice]) for i in range(0, len(ordered), dir_slice)]
        chunks += [Chunk(op=op, path=parent, names=s, group=group) for s in slices]
        groups.append(Group(group, len(slices), Chunk(op="dirmeta", path=parent)))
        metas.discard(parent)
    chunks += [Chunk(op="dirmeta", path=p) for p in sorted(metas)]
    return Seed(chunks, groups)
