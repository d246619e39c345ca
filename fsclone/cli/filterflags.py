"""The filter flags of a pass command as one list of rules, in the order they were given.

rsync's rules apply in command-line order, first match wins, across ``--filter``,
``--exclude``, ``--include`` and the files of ``--exclude-from`` and ``--include-from``. click
keeps the values of each option in order but not the order between options; its parser,
though, reports every occurrence in order, which :class:`RulesInOrder` asks it for. The files
are read here, once: the pass keeps their rules (their content, not their names), so a resume
asked with an edited file is refused.
"""

from __future__ import annotations

import os
import sys

import click

from fsclone.rules import EXCLUDE, INCLUDE, BadRule, from_lines, rule

#: the click parameters that give rules: the sign of their patterns (None: each rule says),
#: and whether each value names a file of patterns
SOURCES: dict[str, tuple[str | None, bool]] = {
    "filter_rules": (None, False), "excludes": (EXCLUDE, False), "includes": (INCLUDE, False),
    "exclude_from": (EXCLUDE, True), "include_from": (INCLUDE, True),
}


class RulesInOrder(click.Command):
    """A command whose ``filter_rules`` parameter ends up holding the rules of all its filter
    flags, in the order given."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        _, _, seen = self.make_parser(ctx).parse_args(args=list(args))
        order = [str(p.name) for p in seen if p.name in SOURCES]
        rest = super().parse_args(ctx, args)
        ctx.params["filter_rules"] = _gather(ctx, order)
        return rest


def _gather(ctx: click.Context, order: list[str]) -> tuple[str, ...]:
    """The rules of the filter flags, each flag's values taken in turn as ``order`` names
    it."""
    params = {p.name: p for p in ctx.command.params}
    values = {name: iter(ctx.params.get(name) or ()) for name in SOURCES}
    rules: list[str] = []
    for name in order:
        sign, is_file = SOURCES[name]
        value, param = next(values[name]), params[name]
        try:
            if is_file:
                rules += from_lines(_read(value, param, ctx), sign)
            elif (found := rule(value, sign)) is not None:
                rules.append(found)
        except BadRule as exc:
            raise click.BadParameter(str(exc), ctx, param) from None
    return tuple(rules)


def _read(path: str, param: click.Parameter, ctx: click.Context) -> str:
    """A file of patterns (``-``: standard input, as in rsync), as names are read
    (undecodable bytes kept as they are)."""
    if path == "-":
        return os.fsdecode(sys.stdin.buffer.read())
    try:
        with open(path, "rb") as f:
            return os.fsdecode(f.read())
    except OSError as exc:
        raise click.BadParameter(f"cannot read {path}: {exc.strerror}", ctx, param) from None
