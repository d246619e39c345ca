"""Starting (or resuming) a scan pass: a read-only walk of one tree, run by the engine like any
pass, so it is parallel, resumable and reported to the stats sinks.

A scan has no target: its spec is a dry run with an empty DST, which the workers never open.
"""

from __future__ import annotations

import os

from fsclone.config import Config
from fsclone.engine.coordinator import Coordinator, Hooks, Summary, interrupted
from fsclone.engine.launch import PassRequest, build_spec
from fsclone.errors import UsageError
from fsclone.spec import PassSpec
from fsclone.state import PassStore, find_unfinished, open_state_dir
from fsclone.stats.trees import record_tree
from fsclone.transport.base import Transport
from fsclone.transport.local import LocalTransport


def run_scan(cfg: Config, src: str, hooks: Hooks, restart: bool = False,
             transport: Transport | None = None) -> tuple[PassSpec, Summary]:
    """Count the tree below ``src``; its totals become the basis of later passes' ETA."""
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
        req = PassRequest(op="scan", src=root, dst="", dry_run=True)
        store = PassStore.create(state, build_spec(cfg, req, root, ""))
    try:
        summary = Coordinator(store, transport or LocalTransport(cfg.workers), hooks).run()
        record_tree(state, store.spec, summary.status, summary.counters)
        return store.spec, summary
    except KeyboardInterrupt as exc:
        raise interrupted(store.spec, exc) from None
    finally:
        store.close()
