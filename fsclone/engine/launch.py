"""Starting (or resuming) a pass: checks, the pass record, the lock, the transport, the run."""

from __future__ import annotations

import os
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from fsclone.config import Config
from fsclone.engine import changelogs
from fsclone.engine.changes import REPLAYS, changes_done, changes_seed
from fsclone.engine.coordinator import Coordinator, Hooks
from fsclone.engine.layout import source_layout
from fsclone.engine.profiles import for_pass
from fsclone.engine.retry import Seed, retry_seed
from fsclone.engine.roots import check_delete_guards, check_roots
from fsclone.engine.sweep import WRITERS, remove_staging, supersede
from fsclone.errors import Interrupted, Terminated, UsageError
from fsclone.fs.lease import TargetLease
from fsclone.lifecycle import UNFINISHED, Summary
from fsclone.options import pass_options
from fsclone.spec import PassSpec, as_flags, differences
from fsclone.state.directory import new_pass_id, open_state_dir, pass_dir
from fsclone.state.lock import TargetLock
from fsclone.state.queries import find_unfinished, read_record
from fsclone.state.record import PassStore
from fsclone.state.trees import record_tree
from fsclone.transport.base import Transport

#: the passes that write to the target, and so take its lease
LEASED = ("copy", "sync", "delete", "mtime")


@dataclass(frozen=True)
class PassRequest:
    """Which pass to run on which roots; its options are the Config's."""

    op: str
    src: str
    dst: str
    resume_id: str = ""  # resume this unfinished pass (``fsclone pass resume ID``)


def build_spec(cfg: Config, op: str, src: str, dst: str) -> PassSpec:
    """A new pass of ``op`` on ``src`` and ``dst``, with the pass options of ``cfg``."""
    return PassSpec(id=new_pass_id(op), op=op, src=src, dst=dst, started=time.time(),
                    **pass_options(cfg))


def interrupted(spec: PassSpec, signal: KeyboardInterrupt) -> Interrupted:
    """The one line a pass or scan stopped by a signal ends with: which signal, how to go on."""
    what = f"{'scan' if spec.op == 'scan' else spec.op + ' pass'} {spec.id} interrupted by " \
        f"{'SIGTERM' if isinstance(signal, Terminated) else 'SIGINT'}"
    if spec.rehearsal:
        return Interrupted(f"{what}; a dry run leaves nothing to resume")
    also = "" if spec.op == "scan" else f" (or: fsclone pass resume {spec.id})"
    return Interrupted(f"{what}; run the same command again to resume{also}")


def resumable(state: Path, pass_id: str) -> PassSpec:
    """The spec of the unfinished pass ``pass_id`` (for ``fsclone pass resume``)."""
    record = read_record(pass_dir(state, pass_id))
    if record.status not in UNFINISHED:
        raise UsageError(f"pass {pass_id} is {record.status}: nothing to resume")
    if record.spec.rehearsal:
        raise UsageError(f"pass {pass_id} is a dry run: it leaves nothing to resume")
    return record.spec


def _to_run(cfg: Config, req: PassRequest, state: Path, src: str,
            dst: str) -> tuple[PassSpec, bool]:
    """The pass to run and whether it is resumed: the one ``pass resume`` names, the
    unfinished one of the same command asked with the same options, or a new one. A resume
    never changes the request: asked with other options, it is refused."""
    if req.resume_id:
        return resumable(state, req.resume_id), True
    asked = replace(build_spec(cfg, req.op, src, dst), source_mounts=source_layout(state, src))
    if cfg.files_from:
        from fsclone.engine.listed import identity  # a --files-from pass's only

        asked = replace(asked, files_from=identity(cfg.files_from))
    # a pass with a manifest starts anew: an interrupted run's rows are not in the new file
    # so does a --changes pass: it takes the pending set as it starts
    if cfg.restart or cfg.dry_run or cfg.retry_of or cfg.manifest or cfg.changes:
        return asked, False
    found = find_unfinished(state, req.op, src, dst)
    if found is None:
        return asked, False
    stored = read_record(pass_dir(state, found)).spec
    changed = differences(stored, asked)
    if changed:
        command = shlex.join(["fsclone", "pass", stored.op, *as_flags(stored), src, dst])
        raise UsageError(f"unfinished pass {found} was started with other {', '.join(changed)}: "
                         f"add --restart to start anew, or resume it as asked: {command}")
    return stored, True


def run_pass(cfg: Config, req: PassRequest, hooks: Hooks,
             transport: Transport) -> tuple[PassSpec, Summary]:
    """Validate, lock the target, create or resume the pass record, and run it to the end
    through ``transport`` (the caller's choice: fsclone.transport.select).
    Everything that can refuse the pass (other options than a resume was started with, the
    delete guards) runs before the record exists or anything is written."""
    if cfg.workers < 1:
        raise UsageError("--workers must be at least 1")
    writes = not cfg.dry_run and req.op in WRITERS
    src, dst = check_roots(req.src, req.dst, needs_dst=not writes and req.op != "copy")
    state = open_state_dir(cfg.state_path)
    lock = TargetLock(state, dst, shared=cfg.dry_run)
    lease: TargetLease | None = None
    try:
        lock.acquire(f"a {req.op} pass starting")
        spec, resume = _to_run(cfg, req, state, src, dst)
        seed = _seed(cfg, spec, state, req.src, transport.slots())
        if spec.op in ("delete", "sync") and not spec.dry_run:
            check_delete_guards(src, dst, spec.sentinel, spec.source_mounts)
        if writes and not os.path.isdir(dst):
            os.mkdir(dst, 0o700)
        lock.hold_target()
        if spec.op in LEASED and not spec.dry_run:
            lease = TargetLease(dst, spec.id)
            lease.take(flocked=lock.root_fd is not None)
            hooks = replace(hooks, progress=_beating(hooks.progress, lease))
        if spec.op in WRITERS and not spec.dry_run:
            _sweep(state, spec, resume, hooks)
        # found once, here: every worker reads it from the spec
        spec = replace(spec, profile=for_pass(spec, resume, cfg.profile_overrides, hooks.note))
        store = PassStore(state / spec.id) if resume else PassStore.create(state, spec)
        if store.spec.profile != spec.profile:
            store.keep_profile(spec.profile)
        # the limits are this run's: a resume runs at those it is given
        store.spec = replace(store.spec, bwlimit=cfg.bwlimit, max_rate=cfg.max_rate,
                             rate_slots=cfg.workers)
        lock.describe(f"pass {spec.id}")
        if resume:
            hooks.note(f"resuming pass {spec.id} (its options apply; --restart starts anew)")
        else:  # a resumed pass keeps the cursor its first run saved
            changelogs.mark(cfg, state, spec, hooks.note)
        coordinator = Coordinator(store, transport, hooks, seed=seed)
        try:
            summary = coordinator.run()
            record_tree(state, store.spec, summary.status, summary.counters)
            changes_done(state, store.spec, summary)
            changelogs.settle(cfg, state, store.spec, summary, hooks.note)
            return store.spec, summary
        except KeyboardInterrupt as exc:
            raise interrupted(store.spec, exc) from None
        finally:
            store.close()
    finally:
        if lease is not None:
            lease.release()
        lock.release()


def run_changes(cfg: Config, src: str, dst: str, hooks: Hooks,
                transport: Transport) -> tuple[PassSpec, Summary]:
    """A ``--changes`` sync pass over the pending set of SRC and DST (fsclone.engine.changes):
    what a watcher runs once it recorded what its feed read."""
    return run_pass(replace(cfg, changes=True), PassRequest("sync", src, dst), hooks, transport)


def _seed(cfg: Config, spec: PassSpec, state: Path, given_src: str, slots: int,
          ) -> Seed | None:
    """What the walk starts from when not the root: the items a pass listed as failed, a
    ``--files-from`` list (read, and refused if it leaves SRC, before anything is written), or
    the directories a watcher recorded as changed (``--changes``)."""
    if spec.retry_of and spec.files_from:
        raise UsageError("--retry-errors and --files-from do not go together")
    if spec.retry_of:
        return retry_seed(state, spec.retry_of, spec.op, spec.dir_slice)
    if spec.files_from:
        from fsclone.engine.listed import listed_seed  # a --files-from pass's only

        return listed_seed(spec.files_from, spec.src, given_src, spec.dir_slice)
    if spec.changes:
        return changes_seed(state, spec, {**REPLAYS, **changelogs.replays(cfg)}, slots)
    return None


def _beating(progress: Callable[[dict[str, int], int], None],
             lease: TargetLease) -> Callable[[dict[str, int], int], None]:
    """The coordinator's progress hook (called every half second) also keeps the lease."""
    def report(counters: dict[str, int], outstanding: int) -> None:
        lease.beat()
        progress(counters, outstanding)
    return report


def _sweep(state: Path, spec: PassSpec, resume: bool, hooks: Hooks) -> None:
    """Clear what dead passes left in the target before this one writes there."""
    # a --retry-errors or --files-from pass covers a few items: it takes the place of no
    # other pass
    superseded = [] if resume or spec.retry_of or spec.files_from else supersede(state, spec)
    for old in superseded:
        hooks.note(f"pass {old} is superseded by this one: its temp files are removed and it "
                   "will not be resumed")
    remove_staging(state, spec.dst, spec.id)
