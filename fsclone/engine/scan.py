"""Starting (or resuming) a scan pass: a read-only walk of one tree, run by the engine like any
pass, so it is parallel, resumable and reported to the stats sinks.

A scan has no target: its spec is a dry run with an empty DST, which the workers never open.
"""

from __future__ import annotations

import os
from dataclasses import replace

from fsclone.config import Config
from fsclone.engine.coordinator import Coordinator, Hooks
from fsclone.engine.launch import build_spec, interrupted
from fsclone.errors import UsageError
from fsclone.lifecycle import Summary
from fsclone.spec import PassSpec
from fsclone.state.directory import open_state_dir
from fsclone.state.queries import find_unfinished
from fsclone.state.record import PassStore
from fsclone.state.trees import record_tree
from fsclone.transport.base import Transport


def run_scan(cfg: Config, src: str, hooks: Hooks, transport: Transport,
             restart: bool = False) -> tuple[PassSpec, Summary]:
    """Count the tree below ``src`` through ``transport``; its totals become the basis of
    later passes' ETA."""
    if cfg.workers < 1:
        raise UsageError("--workers must be at least 1")
    if not os.path.isdir(src):
        raise UsageError(f"source {src} is missing or not a directory")
    root = os.path.realpath(src)
    state = open_state_dir(cfg.state_path)
    resume = None if restart else find_unfinished(state, "scan", root, "")
    if resume:
        hooks.note(f"resuming scan {resume} (--restart starts anew)")
        store = PassStore(state / resume)
    else:
        store = PassStore.create(state, build_spec(replace(cfg, dry_run=True), "scan", root, ""))
    try:
        summary = Coordinator(store, transport, hooks).run()
        record_tree(state, store.spec, summary.status, summary.counters)
        return store.spec, summary
    except KeyboardInterrupt as exc:
        raise interrupted(store.spec, exc) from None
    finally:
        store.close()
