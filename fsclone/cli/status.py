"""``fsclone status``, ``fsclone errors`` and ``fsclone scan``: watching a migration."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import click

from fsclone.cli import (
    CONFIG_OPTION,
    EXIT_ITEMS_FAILED,
    EXIT_OK,
    STATE_DIR_OPTION,
    WORKERS_OPTION,
    cli,
    decorate,
    flag_option,
)
from fsclone.cli.display import render
from fsclone.cli.display.console import Console
from fsclone.cli.display.itemerrors import error_json, error_line
from fsclone.cli.display.views import Views
from fsclone.config import Config, load
from fsclone.engine.coordinator import Hooks
from fsclone.engine.scan import run_scan
from fsclone.state.directory import pass_dir
from fsclone.state.queries import read_errors
from fsclone.state.watch import read_statuses
from fsclone.stats.reporter import reporter_for
from fsclone.transport.local import LocalTransport

_CLEAR = "\x1b[H\x1b[2J"


def _common(f: Callable[..., Any]) -> Callable[..., Any]:
    return decorate(f, [CONFIG_OPTION, STATE_DIR_OPTION, click.option(
        "--json", "as_json", is_flag=True, help="Print JSON, for scripts.")])


def _config(config_file: str | None, **flags: Any) -> Config:
    return load(config_file, os.environ, flags)


def _warn(line: str) -> None:
    print(f"fsclone: {line}", file=sys.stderr, flush=True)


@cli.command("status")
@click.argument("pass_id", metavar="[ID]", required=False)
@click.option("--watch", "-w", is_flag=True, help="Refresh until Ctrl-C, per host and worker.")
@click.option("--interval", type=click.FloatRange(0.1), default=2.0, show_default=True,
              metavar="SECS", help="How often --watch refreshes.")
@flag_option("memcached", help="Read the live view there. MEMCACHED.")
@_common
def status(pass_id: str | None, watch: bool, interval: float, memcached: str | None,
           config_file: str | None, state_dir: str | None, as_json: bool) -> None:
    """Every watcher (events seen, directories pending, lag, last full sync) and every pass
    this site knows (op, roots, state, progress, rate, errors, ETA), or pass ID with each host
    and worker. Reads memcached when MEMCACHED is set, else the pass records."""
    cfg = _config(config_file, state_dir=state_dir, memcached=memcached)
    views = Views(cfg, _warn)
    try:
        def lines() -> list[str]:
            if pass_id:
                return render.detail_lines(views.one(pass_id))
            return render.list_lines(views.all(), read_statuses(cfg.state_path))

        if as_json:
            data = views.one(pass_id).to_json(True) if pass_id else \
                [v.to_json(False) for v in views.all()]
            print(json.dumps(data, indent=1))
        elif watch:
            _watch(lines, interval)
        else:
            print("\n".join(lines()))
    finally:
        views.close()


def _watch(lines: Callable[[], list[str]], interval: float) -> None:
    """Redraw the whole screen every ``interval`` seconds; Ctrl-C ends it quietly."""
    try:
        while True:
            head = f"fsclone status, every {interval:g}s (Ctrl-C to quit)  " \
                   f"{time.strftime('%Y-%m-%d %H:%M:%S')}"
            sys.stdout.write(_CLEAR + "\n".join([head, "", *lines()]) + "\n")
            sys.stdout.flush()
            time.sleep(interval)
    except KeyboardInterrupt:
        sys.stdout.write("\n")


@cli.command("errors")
@click.argument("pass_id", metavar="ID")
@click.option("--limit", type=click.IntRange(1), metavar="N", help="Only the first N.")
@_common
def errors(pass_id: str, limit: int | None, config_file: str | None, state_dir: str | None,
           as_json: bool) -> None:
    """Each item pass ID failed on: where (side and step, when known), path, operation,
    errno, message (from its pass record).
    `fsclone pass copy --retry-errors ID` re-runs just these."""
    cfg = _config(config_file, state_dir=state_dir)
    items = read_errors(pass_dir(cfg.state_path, pass_id), limit)
    if as_json:
        print(json.dumps([error_json(e) for e in items], indent=1))
        return
    for e in items:
        print(error_line(e))


@cli.command("scan")
@click.argument("src", required=False)
@WORKERS_OPTION
@flag_option("restart")
@flag_option("memcached")
@flag_option("graphite")
@click.option("--quiet", "-q", is_flag=True, help="Print only the counts.")
@_common
def scan(src: str | None, workers: int | None, restart: bool, memcached: str | None,
         graphite: str | None, quiet: bool, config_file: str | None, state_dir: str | None,
         as_json: bool) -> None:
    """Count SRC in parallel (files, dirs, symlinks, others, bytes, hard links, a size
    histogram), like dwalk. Later passes on SRC show an ETA from this count."""
    cfg = _config(config_file, state_dir=state_dir, workers=workers, memcached=memcached,
                  graphite=graphite)
    root = src or cfg.source_mount
    if not root:
        raise click.UsageError("SRC is needed (or source_mount in config)")
    console = Console(quiet, as_json)
    hooks = Hooks(progress=console.progress, note=console.note,
                  stats_interval=cfg.report_interval)
    with reporter_for(cfg, console.warn) as reporter:
        hooks.stats = reporter.offer
        spec, summary = run_scan(cfg, root, hooks, LocalTransport(cfg.workers), restart)
    if as_json:
        print(json.dumps({
            "pass": spec.id, "src": spec.src, "status": summary.status,
            "elapsed": round(summary.elapsed, 3), "counters": summary.counters,
            "histogram": [{"min": lo, "max": hi, "files": n}
                          for lo, hi, n in render.histogram(summary.counters)],
            "errors": [error_json(e) for e in summary.errors]}))
    else:
        console.action("\n".join(render.scan_lines(spec.src, spec.id, summary.status,
                                                   summary.elapsed, summary.counters)))
    sys.exit(EXIT_ITEMS_FAILED if summary.error_count else EXIT_OK)
