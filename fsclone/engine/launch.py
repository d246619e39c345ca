"""Starting (or resuming) a pass: checks, the pass record, the lock, the transport, the run."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from fsclone.config import Config
from fsclone.engine.coordinator import Coordinator, Hooks, Summary
from fsclone.engine.retry import retry_seed
from fsclone.engine.roots import check_delete_guards, check_roots
from fsclone.errors import UsageError
from fsclone.spec import PassSpec
from fsclone.state import (
    INTERRUPTED,
    RUNNING,
    PassStore,
    TargetLock,
    find_unfinished,
    new_pass_id,
    open_state_dir,
    pass_dir,
    read_record,
)
from fsclone.stats.trees import record_tree
from fsclone.transport.base import Transport
from fsclone.transport.local import LocalTransport


@dataclass(frozen=True)
class PassRequest:
    """What the user asked for on the command line, beyond the site config."""

    op: str
    src: str
    dst: str
    dry_run: bool = False
    checksum: bool = False
    modify_window: float = 0.0
    includes: tuple[str, ...] = ()
    excludes: tuple[str, ...] = ()
    restart: bool = False
    verbose: bool = False
    sample: float = 1.0
    seed: int = 0
    metadata_only: bool = False
    manifest: bool = False
    retry_of: str = ""  # re-run only the items this pass listed as failed
    resume_id: str = ""  # resume this unfinished pass (``fsclone pass resume ID``)


def build_spec(cfg: Config, req: PassRequest, src: str, dst: str) -> PassSpec:
    return PassSpec(
        id=new_pass_id(req.op), op=req.op, src=src, dst=dst, started=time.time(),
        dry_run=req.dry_run, checksum=req.checksum,
        modify_window_ns=int(req.modify_window * 1e9), oldest=cfg.oldest, newest=cfg.newest,
        excludes=tuple(cfg.excludes) + req.excludes, includes=req.includes,
        large_file_size=cfg.large_file_size, range_size=cfg.range_size, dir_slice=cfg.dir_slice,
        sample=req.sample, seed=req.seed, metadata_only=req.metadata_only, manifest=req.manifest,
        verbose=req.verbose, retry_of=req.retry_of)


def resumable(state: Path, pass_id: str) -> PassSpec:
    """The spec of the unfinished pass ``pass_id`` (for ``fsclone pass resume``)."""
    record = read_record(pass_dir(state, pass_id))
    if record.status not in (RUNNING, INTERRUPTED):
        raise UsageError(f"pass {pass_id} is {record.status}: nothing to resume")
    return record.spec


def run_pass(cfg: Config, req: PassRequest, hooks: Hooks,
             transport: Transport | None = None) -> tuple[PassSpec, Summary]:
    """Validate, lock the target, create or resume the pass record, and run it to the end."""
    if cfg.workers < 1:
        raise UsageError("--workers must be at least 1")
    writes = not req.dry_run and req.op in ("copy", "sync")
    src, dst = check_roots(req.src, req.dst, needs_dst=not writes and req.op != "copy")
    state = open_state_dir(cfg.state_path)
    lock = TargetLock(state, dst, shared=req.dry_run)
    try:
        lock.acquire(f"a {req.op} pass starting")
        if writes and not os.path.isdir(dst):
            os.mkdir(dst, 0o700)
        lock.hold_target()
        # a pass with a manifest starts anew: an interrupted run's rows are not in the new file
        fresh = req.restart or req.dry_run or req.retry_of or req.manifest
        resume = req.resume_id or (None if fresh else find_unfinished(state, req.op, src, dst))
        store = PassStore(state / resume) if resume else PassStore.create(
            state, build_spec(cfg, req, src, dst))
        lock.describe(f"pass {store.spec.id}")
        if resume:
            hooks.note(f"resuming pass {resume} (its options apply; --restart starts anew)")
        if req.op in ("delete", "sync") and not req.dry_run:
            check_delete_guards(src, dst, cfg.sentinel)
        seed = retry_seed(state, req.retry_of, req.op, cfg.dir_slice) if req.retry_of else None
        coordinator = Coordinator(store, transport or LocalTransport(cfg.workers), hooks,
                                  max_delete=cfg.max_delete, seed=seed)
        try:
            summary = coordinator.run()
            record_tree(state, store.spec, summary.status, summary.counters)
            return store.spec, summary
        finally:
            store.close()
    finally:
        lock.release()
