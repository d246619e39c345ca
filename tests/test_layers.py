"""The floors of fsclone: every module imports only from its own room or from floors below.

Read from the source (ast), not by importing, so an import inside a function counts as much
as one at the top. A floor holds rooms that do not use each other: the record (``state``),
the stats sinks and the ops all stand on ``fs`` and the ground, and none of them may reach
into another, nor up into the engine or the CLI.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "fsclone"

#: the ground floor: value types and pure logic every floor above may use
GROUND = (
    "fsclone", "fsclone.errors", "fsclone.pathkey", "fsclone.process", "fsclone.private",
    "fsclone.text", "fsclone.ages", "fsclone.schema", "fsclone.chunk", "fsclone.spec",
    "fsclone.lifecycle", "fsclone.signing", "fsclone.manifest", "fsclone.options",
    "fsclone.optionvalues", "fsclone.config", "fsclone.filters", "fsclone.rules",
    "fsclone.fsprofile",
    "fsclone.stats.counters", "fsclone.changes", "fsclone.changes.feed", "fsclone.changes.reduce",
    "fsclone.changes.clrecords",
)

#: lowest first; each floor maps its rooms to their modules (a name ending in ".*" is a
#: package and all below it; the longest match places a module)
FLOORS: list[dict[str, tuple[str, ...]]] = [
    {"ground": GROUND},
    {"fs": ("fsclone.fs.*",)},
    {"ops": ("fsclone.ops.*",), "state": ("fsclone.state.*",), "sinks": ("fsclone.stats.*",),
     "changelog feed": ("fsclone.changes.changelog", "fsclone.changes.fidpaths"),
     "fanotify feed": ("fsclone.changes.fanotify",)},
    # one room here; where they may meet is test_engine_and_transports_meet_only_at_the_seam
    {"engine and transports": ("fsclone.engine.*", "fsclone.transport.*")},
    {"cli": ("fsclone.cli.*", "fsclone.__main__", "fsclone.demo")},
]

#: the seam: the one module of the transports the engine may import (the interfaces a
#: transport implements), and the one of the engine a transport may import (the worker loop
#: it runs over its delivery)
TRANSPORT_SEAM = ("fsclone.transport.base",)
ENGINE_SEAM = ("fsclone.engine.worker",)

#: the packages that talk to a broker or an MPI job, which only the transports may import
TRANSPORT_LIBRARIES = ("pika", "mpi4py")


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = _modules()


def _imports(module: str) -> Iterator[tuple[int, str]]:
    """(line, imported module) for every import in ``module``; ``from X import Y`` counts as
    X.Y when that is a module of ours, else as X."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, up level - 1
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                yield node.lineno, full if full in MODULES else base


def _place(module: str) -> tuple[int, str] | None:
    """(floor, room) of one of our modules, by the longest name that holds it."""
    best: tuple[int, int, str] | None = None
    for level, rooms in enumerate(FLOORS):
        for room, names in rooms.items():
            for name in names:
                prefix = name.removesuffix(".*")
                holds = module == prefix or (name.endswith(".*")
                                             and module.startswith(prefix + "."))
                if holds and (best is None or len(prefix) > best[0]):
                    best = (len(prefix), level, room)
    return None if best is None else (best[1], best[2])


def _ours(imported: str) -> str | None:
    """The module of ours an import names (``fsclone.stats`` for ``fsclone.stats.X`` that is no
    module), or None for one of the standard library's or a dependency's."""
    while imported and imported not in MODULES:
        imported = imported.rpartition(".")[0]
    return imported or None


def _report(what: str, offences: list[str]) -> str:
    return "\n".join([f"{what}:", *offences])


def test_every_module_is_on_a_floor() -> None:
    """A new module is given its floor here, on purpose, before the other rules apply to it."""
    assert [m for m in MODULES if _place(m) is None] == []


def test_modules_import_only_their_own_room_or_lower_floors() -> None:
    offences = []
    for module in MODULES:
        place = _place(module)
        assert place is not None, module
        for line, imported in _imports(module):
            target = _ours(imported)
            there = _place(target) if target else None
            if there is None or there[1] == place[1] or there[0] < place[0]:
                continue
            offences.append(f"{MODULES[module].relative_to(PACKAGE.parent)}:{line}: {module} "
                            f"({place[1]}) imports {target} ({there[1]})")
    assert not offences, _report("imports up a floor or across a room", offences)


def test_only_the_transports_import_pika_or_mpi4py() -> None:
    offences = [f"{MODULES[module].relative_to(PACKAGE.parent)}:{line}: {module} imports "
                f"{imported}"
                for module in MODULES if not module.startswith("fsclone.transport.")
                for line, imported in _imports(module)
                if imported.split(".")[0] in TRANSPORT_LIBRARIES]
    assert not offences, _report("a broker or MPI library outside the transports", offences)


def test_engine_and_transports_meet_only_at_the_seam() -> None:
    """The engine knows transports only through their interfaces (the launcher is handed a
    concrete one), and a transport uses of the engine only the worker loop it runs."""
    sides = {"fsclone.engine": ("fsclone.transport", TRANSPORT_SEAM),
             "fsclone.transport": ("fsclone.engine", ENGINE_SEAM)}
    offences = []
    for module in MODULES:
        side = module.split(".")[:2]
        if ".".join(side) not in sides:
            continue
        other, seam = sides[".".join(side)]
        for line, imported in _imports(module):
            target = _ours(imported)
            if target and target.startswith(other + ".") and target not in seam:
                offences.append(f"{MODULES[module].relative_to(PACKAGE.parent)}:{line}: "
                                f"{module} imports {target}")
    assert not offences, _report("imports past the engine/transport seam", offences)
