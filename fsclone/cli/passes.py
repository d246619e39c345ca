"""``fsclone pass OP``: the passes of a migration."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

import click

from fsclone.cli import EXIT_ITEMS_FAILED, EXIT_OK, cli
from fsclone.config import load
from fsclone.engine.coordinator import Hooks
from fsclone.engine.launch import PassRequest, run_pass
from fsclone.filters import parse_age
from fsclone.stats.progress import Console


@cli.group("pass")
def pass_group() -> None:
    """Run one pass of a migration: copy, delete, mtime, sync (final), verify."""


def _pass_options(f: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.argument("src", required=False),
        click.argument("dst", required=False),
        click.option("--config", "config_file", metavar="FILE",
                     help="Site config (config.py); also FSCLONE_CONFIG."),
        click.option("--workers", "-w", type=int, help="Worker processes [default: cores]."),
        click.option("--state-dir", metavar="DIR", help="Where pass records live."),
        click.option("--dry-run", "-n", is_flag=True,
                     help="Show what would change; change nothing."),
        click.option("--checksum", "-c", is_flag=True,
                     help="Compare content by xxhash, not size and mtime."),
        click.option("--modify-window", type=float, default=0.0, metavar="SECS",
                     help="Times this close count as equal (coarse-time filesystems)."),
        click.option("--oldest", metavar="AGE",
                     help="Skip files not read for AGE (atime), e.g. 90d. OLDEST_DATE."),
        click.option("--newest", metavar="AGE",
                     help="Skip files written in the last AGE (mtime), e.g. 1d. NEWEST_DATE."),
        click.option("--exclude", multiple=True, metavar="GLOB",
                     help="Leave matching entries alone."),
        click.option("--include", multiple=True, metavar="GLOB", help="Overrides --exclude."),
        click.option("--max-delete", type=int, metavar="N",
                     help="Refuse to delete anything if more than N entries would go."),
        click.option("--sentinel", metavar="NAME",
                     help="Refuse to delete unless SRC/NAME exists."),
        click.option("--restart", is_flag=True, help="Start anew instead of resuming."),
        click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON."),
        click.option("--quiet", "-q", is_flag=True, help="Print only errors."),
        click.option("--verbose", "-v", is_flag=True, help="Print every change made."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _run(op: str, **kw: Any) -> None:
    flags = {
        "workers": kw["workers"], "state_dir": kw["state_dir"],
        "oldest": parse_age(kw["oldest"]) if kw["oldest"] is not None else None,
        "newest": parse_age(kw["newest"]) if kw["newest"] is not None else None,
        "max_delete": kw["max_delete"], "sentinel": kw["sentinel"],
    }
    cfg = load(kw["config_file"], os.environ, flags)
    src = kw["src"] or cfg.source_mount
    dst = kw["dst"] or cfg.target_mount
    if not src or not dst:
        raise click.UsageError("SRC and DST are needed (or source_mount/target_mount in config)")
    req = PassRequest(
        op=op, src=src, dst=dst, dry_run=kw["dry_run"], checksum=kw["checksum"],
        modify_window=kw["modify_window"], includes=kw["include"], excludes=kw["exclude"],
        restart=kw["restart"], verbose=kw["verbose"])
    console = Console(kw["quiet"], kw["as_json"])
    hooks = Hooks(progress=console.progress, action=console.action, note=console.note)
    spec, summary = run_pass(cfg, req, hooks)
    console.summary(spec.id, op, summary, spec.dry_run)
    sys.exit(EXIT_ITEMS_FAILED if summary.error_count else EXIT_OK)


def _make_pass_command(op: str, doc: str) -> None:
    def command(**kw: Any) -> None:
        _run(op, **kw)

    command.__doc__ = doc
    pass_group.command(op)(_pass_options(command))


_make_pass_command("copy", "Copy what differs from SRC to DST (early passes, while users work).")
_make_pass_command("delete", "Delete from DST what vanished from SRC (guarded).")
_make_pass_command("mtime", "Give every DST directory its SRC times (last).")
_make_pass_command("sync", "Final pass: copy and delete in one walk, directory times restored.")
