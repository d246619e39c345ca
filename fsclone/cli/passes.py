"""``fsclone pass OP``: the passes of a migration."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from dataclasses import replace
from typing import Any, NoReturn

import click

from fsclone.cli import (
    CONFIG_OPTION,
    EXIT_CHANGED,
    EXIT_ITEMS_FAILED,
    EXIT_OK,
    Decorator,
    cli,
    decorate,
    flag_options,
    given,
)
from fsclone.cli.display.console import Console
from fsclone.cli.display.logfile import open_log
from fsclone.cli.filterflags import RulesInOrder
from fsclone.config import Config, load
from fsclone.engine.coordinator import Hooks
from fsclone.engine.launch import PassRequest, resumable, run_pass
from fsclone.engine.retry import retry_roots
from fsclone.manifest import ManifestWriter, check_location
from fsclone.options import PASSES, Option, pass_options
from fsclone.spec import PassSpec
from fsclone.stats import counters as C
from fsclone.stats.reporter import reporter_for
from fsclone.transport import select
from fsclone.transport.base import Transport
from fsclone.transport.depth import Concurrency
from fsclone.transport.mpi import MpiJob


@cli.group("pass")
def pass_group() -> None:
    """Run one pass of a migration: copy, delete, mtime, sync (final), verify."""


#: the options of every command that runs a pass, ``pass resume`` included
_RUN_OPTIONS: list[Decorator] = [
    CONFIG_OPTION,
    *flag_options("resume"),
    click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON."),
    click.option("--quiet", "-q", is_flag=True, help="Print only errors."),
]


def _pass_options(op: str, f: Callable[..., Any]) -> Callable[..., Any]:
    """The arguments and options of ``fsclone pass OP``: first the options of some passes
    only, last those every pass has."""
    def every(o: Option) -> bool:
        return set(PASSES) <= set(o.commands)

    return decorate(f, [
        *flag_options(op, lambda o: not every(o)),
        click.argument("src", required=False),
        click.argument("dst", required=False),
        *_RUN_OPTIONS,
        *flag_options(op, lambda o: every(o) and "resume" not in o.commands),
    ])


def _run(op: str, **kw: Any) -> None:
    cfg = load(kw["config_file"], os.environ, given(kw))
    if cfg.retry_of:
        kw["src"], kw["dst"] = retry_roots(cfg.state_path, cfg.retry_of, kw["src"], kw["dst"])
    src = kw["src"] or cfg.source_mount
    dst = kw["dst"] or cfg.target_mount
    if not src or not dst:
        raise click.UsageError("SRC and DST are needed (or source_mount/target_mount in config)")
    if kw.get("manifest"):
        if cfg.metadata_only:
            raise click.UsageError("--manifest needs the content read: not with --metadata-only")
        check_location(kw["manifest"], (src, dst))
    _start(cfg, PassRequest(op=op, src=src, dst=dst), kw)


def _resume(pass_id: str, **kw: Any) -> None:
    """Resume the unfinished pass ID (as `fsclone status` lists it) with its own options;
    running the same pass command again does the same."""
    cfg = load(kw["config_file"], os.environ, given(kw))
    spec = resumable(cfg.state_path, pass_id)
    _start(replace(cfg, **pass_options(spec)),
           PassRequest(op=spec.op, src=spec.src, dst=spec.dst, resume_id=spec.id), kw)


pass_group.command("resume")(
    decorate(_resume, [click.argument("pass_id", metavar="ID"), *_RUN_OPTIONS]))


def _start(cfg: Config, req: PassRequest, kw: dict[str, Any]) -> NoReturn:
    """Run the pass through its transport: coordinate, or serve as a rank of an MPI job."""
    kind = select.choose(cfg, os.environ)
    roots = (req.src, req.dst)
    if not select.by_rank(kind, os.environ):
        code = _coordinate(cfg, req, kw, *select.transport(kind, cfg, roots))
        if kind == "local":
            _leave(code)
        sys.exit(code)
    job = MpiJob(os.environ)  # rank 0 coordinates, the other ranks work
    if job.rank > 0:
        sys.exit(job.serve(select.rank_service(kind, cfg, job.rank, roots)))
    with job.coordinating():
        sys.exit(_coordinate(cfg, req, kw, *select.transport(kind, cfg, roots, job)))


def _leave(code: int) -> NoReturn:
    """End a local pass at once. Its record, lock and workers are all closed by now, so the
    interpreter's teardown (freeing every object one by one: 10-20 ms, 4% of a no-op re-run of
    50,000 files) buys nothing. Other transports exit normally: MPI and pika finalize at exit."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _coordinate(cfg: Config, req: PassRequest, kw: dict[str, Any], transport: Transport,
                concurrency: Concurrency | None) -> int:
    """Run the pass, print its summary (with the ``concurrency`` a local pass chose), and
    return the exit code."""
    log = open_log(cfg.log_file, (req.src, req.dst)) if cfg.log_file else None
    console = Console(kw["quiet"], kw["as_json"], every=cfg.progress, log=log,
                      state_dir=cfg.state_path)
    hooks = Hooks(start=console.start, progress=console.progress, action=console.action,
                  note=console.note, stats_interval=cfg.report_interval)
    with contextlib.ExitStack() as stack:
        hooks.stats = stack.enter_context(reporter_for(cfg, console.warn)).offer
        if kw.get("manifest"):
            hooks.manifest = stack.enter_context(ManifestWriter(kw["manifest"])).write
        spec, summary = run_pass(cfg, req, hooks, transport)
    console.summary(spec.id, req.op, summary, spec.dry_run, _verify_notes(spec), spec.profile,
                    concurrency)
    if summary.error_count or summary.counters.get(C.MISMATCHES):
        return EXIT_ITEMS_FAILED
    return EXIT_CHANGED if summary.counters.get(C.CHANGED) else EXIT_OK


def _verify_notes(spec: PassSpec) -> list[str]:
    """What the summary must say about a partial verify."""
    notes = []
    if spec.sample < 1.0:
        notes.append(f"sampled: {spec.sample * 100:.4g}% of the files, drawn by --seed "
                     f"{spec.seed}")
    if spec.metadata_only:
        notes.append("metadata only: no content read")
    return notes


def _make_pass_command(op: str, doc: str) -> None:
    def command(**kw: Any) -> None:
        _run(op, **kw)

    command.__doc__ = doc
    pass_group.command(op, cls=RulesInOrder)(_pass_options(op, command))


_make_pass_command("copy", "Copy what differs from SRC to DST (early passes, while users work).")
_make_pass_command("delete", "Delete from DST what vanished from SRC (guarded).")
_make_pass_command("mtime", "Give every DST directory its SRC times (last).")
_make_pass_command("sync", "Final pass: copy and delete in one walk, directory times restored.")
_make_pass_command("verify", "Compare DST with SRC: content by xxhash (all or a --sample) and "
                   "metadata; exit 1 when anything differs.")
