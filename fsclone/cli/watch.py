"""``fsclone watch SRC DST``: keep DST converged with SRC from filesystem events."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import click

from fsclone.cli import CONFIG_OPTION, cli, decorate, flag_options, given
from fsclone.cli.display.console import Console
from fsclone.cli.display.logfile import open_log
from fsclone.cli.filterflags import RulesInOrder
from fsclone.config import Config, load
from fsclone.engine.coordinator import Hooks
from fsclone.engine.launch import PassRequest, run_pass
from fsclone.engine.watch import watch
from fsclone.errors import UsageError
from fsclone.lifecycle import Summary
from fsclone.options import Option
from fsclone.spec import PassSpec
from fsclone.stats import counters as C
from fsclone.stats.reporter import reporter_for
from fsclone.transport import select

#: the flags of ``pass sync`` a watcher has no use for: it never rehearses, always starts its
#: full syncs anew, and runs its batches with --changes itself
_NOT_WATCHING = ("dry_run", "restart", "changes")


def _watched(o: Option) -> bool:
    return o.name not in _NOT_WATCHING


def _watch(src: str, dst: str, **kw: Any) -> None:
    """Keep DST a faithful copy of SRC from filesystem events (fanotify, as root; a Lustre
    source's changelogs with CHANGELOG_USERS set): a full pass sync first (changelogs: unless
    it resumes from their cursor), then a sync of the directories each burst of changes
    dirtied. Runs
    until SIGTERM or Ctrl-C (exit 130); `fsclone status` shows it. Takes the flags of
    `pass sync`; WATCH_QUIET and WATCH_MAX_WAIT pace its batches."""
    cfg = load(kw["config_file"], os.environ, given(kw))
    kind = select.choose(cfg, os.environ)
    if select.by_rank(kind, os.environ):
        raise UsageError("fsclone watch runs alone, not as the ranks of an MPI job: give it "
                         "--transport local or amqp")
    log = open_log(cfg.log_file, (src, dst)) if cfg.log_file else None
    console = Console(kw["quiet"], False, every=cfg.progress, log=log, state_dir=cfg.state_path)

    def run(cfg: Config, req: PassRequest, tick: Callable[[], None]) -> tuple[PassSpec, Summary]:
        def progress(counters: dict[str, int], outstanding: int) -> None:
            tick()
            console.progress(counters, outstanding)

        hooks = Hooks(start=console.start, progress=progress, action=console.action,
                      note=console.note, stats_interval=cfg.report_interval)
        with reporter_for(cfg, console.warn) as reporter:
            hooks.stats = reporter.offer
            transport, _ = select.transport(kind, cfg, (req.src, req.dst))
            spec, summary = run_pass(cfg, req, hooks, transport)
        if cfg.changes:
            console.note(_batch_line(spec, summary))
        else:
            console.summary(spec.id, req.op, summary, False)
        return spec, summary

    watch(cfg, src, dst, run, lambda line: console.note(line, always=True))


def _batch_line(spec: PassSpec, summary: Summary) -> str:
    """A batch of changes applied, in one line."""
    c = summary.counters
    said = ", ".join(f"{c[key]:,} {label}" for key, label in (
        (C.COPIED, "copied"), (C.CREATED, "created"), (C.UPDATED, "updated"),
        (C.DELETED, "deleted"), (C.ERRORS, "failed")) if c.get(key))
    return f"pass {spec.id}: changes {summary.status} in {summary.elapsed:.1f}s" \
        f"{': ' + said if said else ''}"


cli.command("watch", cls=RulesInOrder)(decorate(_watch, [
    click.argument("src"),
    click.argument("dst"),
    CONFIG_OPTION,
    click.option("--quiet", "-q", is_flag=True, help="Print only errors."),
    *flag_options("sync", _watched),
]))
