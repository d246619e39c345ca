"""``fsclone pass OP``: the passes of a migration."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import click

from fsclone.cli import (
    CONFIG_OPTION,
    EXIT_CHANGED,
    EXIT_ITEMS_FAILED,
    EXIT_OK,
    STATE_DIR_OPTION,
    WORKERS_OPTION,
    Decorator,
    Seconds,
    cli,
    decorate,
)
from fsclone.config import Config, load
from fsclone.engine.coordinator import Hooks
from fsclone.engine.launch import PassRequest, resumable, run_pass
from fsclone.engine.retry import retry_roots
from fsclone.filters import parse_age
from fsclone.manifest import ManifestWriter, check_location
from fsclone.spec import PassSpec
from fsclone.stats import counters as C
from fsclone.stats.progress import Console
from fsclone.stats.reporter import reporter_for
from fsclone.transport import select
from fsclone.transport.base import Transport
from fsclone.transport.mpi import MpiJob
from fsclone.transport.select import TRANSPORTS


@cli.group("pass")
def pass_group() -> None:
    """Run one pass of a migration: copy, delete, mtime, sync (final), verify."""


#: the options of every command that runs a pass, ``pass resume`` included
_RUN_OPTIONS: list[Decorator] = [
    CONFIG_OPTION,
    WORKERS_OPTION,
    click.option("--transport", type=click.Choice(TRANSPORTS), default="auto",
                 show_default=True,
                 help="How chunks reach workers; auto: amqp when a broker is set (under "
                      "srun/mpirun the other ranks consume it), else mpi when run by "
                      "srun/mpirun, else local. TRANSPORT."),
    click.option("--broker", metavar="URL",
                 help="amqp://USER@HOST[:PORT]/VHOST for `fsclone worker`s (no password: "
                      "see PASSWORD_FILE). BROKER."),
    STATE_DIR_OPTION,
    click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON."),
    click.option("--quiet", "-q", is_flag=True, help="Print only errors."),
]


def _pass_options(f: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.argument("src", required=False),
        click.argument("dst", required=False),
        *_RUN_OPTIONS,
        click.option("--dry-run", "-n", is_flag=True,
                     help="Show what would change; change nothing."),
        click.option("--checksum", "-c", is_flag=True,
                     help="Compare content by xxhash, not size and mtime."),
        click.option("--modify-window", type=Seconds(), default=0.0, metavar="SECS",
                     help="Times this close count as equal (coarse-time filesystems)."),
        click.option("--oldest", metavar="AGE",
                     help="Skip files not read for AGE (atime), e.g. 90d. OLDEST_DATE."),
        click.option("--newest", metavar="AGE",
                     help="Skip files written in the last AGE (mtime), e.g. 1d. NEWEST_DATE."),
        click.option("--exclude", multiple=True, metavar="GLOB",
                     help="Leave matching entries alone."),
        click.option("--include", multiple=True, metavar="GLOB", help="Overrides --exclude."),
        click.option("--max-delete", type=click.IntRange(min=0), metavar="N",
                     help="Refuse to delete anything if more than N entries would go."),
        click.option("--sentinel", metavar="NAME",
                     help="Refuse to delete unless SRC/NAME exists."),
        click.option("--one-file-system", "-x", is_flag=True,
                     help="Do not walk into directories of SRC on other filesystems (mounts)."),
        click.option("--restart", is_flag=True, help="Start anew instead of resuming."),
        click.option("--verbose", "-v", is_flag=True, help="Print every change made."),
    ]
    return decorate(f, options)


def _run_flags(kw: dict[str, Any]) -> dict[str, Any]:
    return {"workers": kw["workers"], "state_dir": kw["state_dir"], "broker": kw["broker"],
            "transport": None if kw["transport"] == "auto" else kw["transport"]}


def _run(op: str, **kw: Any) -> None:
    flags = {
        **_run_flags(kw),
        "oldest": parse_age(kw["oldest"]) if kw["oldest"] is not None else None,
        "newest": parse_age(kw["newest"]) if kw["newest"] is not None else None,
        "max_delete": kw["max_delete"], "sentinel": kw["sentinel"],
    }
    cfg = load(kw["config_file"], os.environ, flags)
    if kw.get("retry_errors"):
        kw["src"], kw["dst"] = retry_roots(cfg.state_path, kw["retry_errors"], kw["src"], kw["dst"])
    src = kw["src"] or cfg.source_mount
    dst = kw["dst"] or cfg.target_mount
    if not src or not dst:
        raise click.UsageError("SRC and DST are needed (or source_mount/target_mount in config)")
    req = PassRequest(
        op=op, src=src, dst=dst, dry_run=kw["dry_run"], checksum=kw["checksum"],
        modify_window=kw["modify_window"], includes=kw["include"], excludes=kw["exclude"],
        restart=kw["restart"], verbose=kw["verbose"],
        retry_of=kw.get("retry_errors") or "", one_file_system=kw["one_file_system"],
        **_verify_fields(kw, src, dst))
    _start(cfg, req, kw)


def _resume(pass_id: str, **kw: Any) -> None:
    """Resume the unfinished pass ID (as `fsclone status` lists it) with its own options;
    running the same pass command again does the same."""
    cfg = load(kw["config_file"], os.environ, _run_flags(kw))
    spec = resumable(cfg.state_path, pass_id)
    _start(cfg, PassRequest(op=spec.op, src=spec.src, dst=spec.dst, dry_run=spec.dry_run,
                            retry_of=spec.retry_of, resume_id=spec.id), kw)


pass_group.command("resume")(
    decorate(_resume, [click.argument("pass_id", metavar="ID"), *_RUN_OPTIONS]))


def _start(cfg: Config, req: PassRequest, kw: dict[str, Any]) -> NoReturn:
    """Run the pass through its transport: coordinate, or serve as a rank of an MPI job."""
    kind = select.choose(cfg, os.environ)
    if not select.by_rank(kind, os.environ):
        transport = select.transport(kind, cfg)
        code = _coordinate(cfg, req, kw, transport)
        if kind == "local":
            _leave(code)
        sys.exit(code)
    job = MpiJob(os.environ)  # rank 0 coordinates, the other ranks work
    if job.rank > 0:
        sys.exit(job.serve(select.rank_service(kind, cfg, job.rank, (req.src, req.dst))))
    with job.coordinating():
        sys.exit(_coordinate(cfg, req, kw, select.transport(kind, cfg, job)))


def _leave(code: int) -> NoReturn:
    """End a local pass at once. Its record, lock and workers are all closed by now, so the
    interpreter's teardown (freeing every object one by one: 10-20 ms, 4% of a no-op re-run of
    50,000 files) buys nothing. Other transports exit normally: MPI and pika finalize at exit."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _coordinate(cfg: Config, req: PassRequest, kw: dict[str, Any],
                transport: Transport) -> int:
    """Run the pass, print its summary, and return the exit code."""
    console = Console(kw["quiet"], kw["as_json"])
    hooks = Hooks(progress=console.progress, action=console.action, note=console.note,
                  stats_interval=cfg.report_interval)
    with contextlib.ExitStack() as stack:
        hooks.stats = stack.enter_context(reporter_for(cfg, console.warn)).offer
        if kw.get("manifest"):
            hooks.manifest = stack.enter_context(ManifestWriter(kw["manifest"])).write
        spec, summary = run_pass(cfg, req, hooks, transport)
    console.summary(spec.id, req.op, summary, spec.dry_run, _verify_notes(spec))
    if summary.error_count or summary.counters.get(C.MISMATCHES):
        return EXIT_ITEMS_FAILED
    return EXIT_CHANGED if summary.counters.get(C.CHANGED) else EXIT_OK


_VERIFY_OPTIONS: list[Decorator] = [
    click.option("--sample", type=click.FloatRange(0, 1, min_open=True), default=1.0,
                 metavar="F", help="Check a random fraction F of the files [default: all]."),
    click.option("--seed", type=click.IntRange(0, 2**64 - 1), default=0, show_default=True,
                 help="Which sample: the same seed draws the same files."),
    click.option("--metadata-only", is_flag=True,
                 help="Compare types, sizes, owners, modes, times, links, xattrs; no data."),
    click.option("--manifest", type=click.Path(dir_okay=False), metavar="FILE",
                 help="Write path, size, mtime and xxh3-128 of every file checked (TSV)."),
]


def _verify_fields(kw: dict[str, Any], src: str, dst: str) -> dict[str, Any]:
    """The verify options as PassRequest fields (none for other passes)."""
    if "sample" not in kw:
        return {}
    if kw["manifest"]:
        if kw["metadata_only"]:
            raise click.UsageError("--manifest needs the content read: not with --metadata-only")
        check_location(kw["manifest"], (src, dst))
    return {"sample": kw["sample"], "seed": kw["seed"], "metadata_only": kw["metadata_only"],
            "manifest": bool(kw["manifest"])}


def _verify_notes(spec: PassSpec) -> list[str]:
    """What the summary must say about a partial verify."""
    notes = []
    if spec.sample < 1.0:
        notes.append(f"sampled: {spec.sample * 100:.4g}% of the files, drawn by --seed "
                     f"{spec.seed}")
    if spec.metadata_only:
        notes.append("metadata only: no content read")
    return notes


_RETRY_OPTIONS: list[Decorator] = [
    click.option("--retry-errors", metavar="ID",
                 help="Re-run only the items pass ID listed as failed, on its roots."),
]


def _make_pass_command(op: str, doc: str, extra: Sequence[Decorator] = ()) -> None:
    def command(**kw: Any) -> None:
        _run(op, **kw)

    command.__doc__ = doc
    pass_group.command(op)(decorate(_pass_options(command), extra))


_make_pass_command("copy", "Copy what differs from SRC to DST (early passes, while users work).",
                   _RETRY_OPTIONS)
_make_pass_command("delete", "Delete from DST what vanished from SRC (guarded).")
_make_pass_command("mtime", "Give every DST directory its SRC times (last).")
_make_pass_command("sync", "Final pass: copy and delete in one walk, directory times restored.")
_make_pass_command("verify", "Compare DST with SRC: content by xxhash (all or a --sample) and "
                   "metadata; exit 1 when anything differs.", _VERIFY_OPTIONS)
