"""The coordinator: seeds each phase of a pass, applies results, ends a phase when nothing is
outstanding.

Termination by counting: every chunk is recorded as outstanding before it is submitted, and
leaves that set when its result is applied; a result for a chunk no longer outstanding is a
duplicate (at-least-once delivery) and is ignored, children and all. Barriers (groups) hold a
chunk back until all their members are done: a split directory's ``dirmeta``, a large file's
``finalize``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from fsclone.chunk import Chunk, ItemError, ManifestRow, Result
from fsclone.errors import GuardError
from fsclone.state import DONE, INTERRUPTED, REFUSED, PassStore
from fsclone.stats import counters as C
from fsclone.transport.base import Transport

#: the phases of each pass, in order
PHASES: dict[str, tuple[str, ...]] = {
    "copy": ("walk", "cleanup"),
    "sync": ("walk", "unlink", "cleanup"),
    "delete": ("walk", "unlink"),
    "mtime": ("walk",),
    "verify": ("walk",),
}
#: phases that change the target, skipped by a dry run
_WRITING_PHASES = {"unlink", "cleanup"}


@dataclass
class Hooks:
    """How the coordinator reports while it runs; the CLI decides where it goes."""

    progress: Callable[[dict[str, int], int], None] = lambda counters, outstanding: None
    action: Callable[[str], None] = lambda line: None
    note: Callable[[str], None] = lambda line: None
    manifest: Callable[[list[ManifestRow]], None] = lambda rows: None
    interval: float = 0.5


@dataclass
class Summary:
    status: str
    counters: dict[str, int]
    errors: list[ItemError] = field(default_factory=list)
    error_count: int = 0
    elapsed: float = 0.0


class Coordinator:
    def __init__(self, store: PassStore, transport: Transport, hooks: Hooks | None = None,
                 max_delete: int | None = None, max_attempts: int = 3) -> None:
        self.store = store
        self.transport = transport
        self.hooks = hooks or Hooks()
        self.max_delete = max_delete
        self.max_attempts = max_attempts

    def run(self) -> Summary:
        store, spec = self.store, self.store.spec
        started = time.monotonic()
        self.transport.start(spec)
        try:
            for index, phase in enumerate(PHASES[spec.op]):
                if index < store.phase or (spec.dry_run and phase in _WRITING_PHASES):
                    continue
                if store.outstanding:
                    self.hooks.note(f"resuming {store.outstanding} outstanding chunks")
                    pending = [c.retry() for c in store.outstanding_chunks()]
                    for chunk in pending:
                        store.replace_chunk(chunk)
                else:
                    pending = self._seed(phase)
                    store.add_chunks(pending)
                store.commit()
                self.transport.submit(pending)
                self._drain()
                store.set_phase(index + 1)
                store.commit()
            store.set_status(DONE)
        except KeyboardInterrupt:
            store.set_status(INTERRUPTED)
            raise
        finally:
            self.transport.stop()
        errors = store.errors(limit=20)
        return Summary(store.status, dict(store.counters), errors,
                       store.counters.get(C.ERRORS, 0), time.monotonic() - started)

    def _seed(self, phase: str) -> list[Chunk]:
        spec = self.store.spec
        if phase == "walk":
            return [Chunk(op=spec.op, path="")]
        if phase == "cleanup":
            return [Chunk(op="cleanup", path="")]
        planned = self.store.planned_entries()
        if self.max_delete is not None and planned > self.max_delete:
            self.store.set_status(REFUSED)
            raise GuardError(f"the pass would delete {planned} entries, more than --max-delete "
                             f"{self.max_delete}: nothing was deleted")
        step = spec.dir_slice
        return [Chunk(op="unlink", path=path, names=tuple(names[i:i + step]))
                for path, names in self.store.planned_deletions()
                for i in range(0, len(names), step)]

    def _drain(self) -> None:
        store, hooks = self.store, self.hooks
        next_report = 0.0
        while store.outstanding:
            results = self.transport.poll(0.2)
            submit: list[Chunk] = []
            for result in results:
                submit.extend(self._apply(result))
            if results:
                store.commit()
                self.transport.settle()
            if submit:
                self.transport.submit(submit)
            now = time.monotonic()
            if now >= next_report:
                hooks.progress(store.counters, store.outstanding)
                next_report = now + hooks.interval
        hooks.progress(store.counters, store.outstanding)

    def _apply(self, result: Result) -> list[Chunk]:
        """Record one result; returns the chunks it releases (children, retries, barriers)."""
        store, chunk = self.store, result.chunk
        if not store.is_outstanding(chunk.id):
            return []  # a duplicate delivery: its first result was applied already
        if result.failed:
            if chunk.attempt + 1 < self.max_attempts:
                retry = chunk.retry()
                store.replace_chunk(retry)
                self.hooks.note(f"retrying chunk {chunk.op} {chunk.path!r}: {result.failed}")
                return [retry]
            why = f"chunk failed {chunk.attempt + 1} times: {result.failed}"
            store.add_errors([ItemError(chunk.path, chunk.op, 0, why)])
            store.add_counters({C.ERRORS: 1})
            result = Result(chunk=chunk)
        store.add_counters(result.counters)
        store.add_errors(result.errors)
        store.add_deletions(result.deletions)
        for line in result.actions:
            self.hooks.action(line)
        if result.manifest:
            self.hooks.manifest(result.manifest)
        for group in result.groups:
            store.add_group(group)
        released = list(result.children)
        store.add_chunks(released)
        store.finish_chunk(chunk.id)
        handed_over = any(g.then.group == chunk.group for g in result.groups)
        if chunk.group and not handed_over:
            released.extend(self._complete_member(chunk.group))
        return released

    def _complete_member(self, group_id: str) -> list[Chunk]:
        then = self.store.complete_member(group_id)
        if then is None:
            return []
        if then.op == "barrier":  # a hand-over placeholder: complete its own group at once
            return self._complete_member(then.group) if then.group else []
        self.store.add_chunks([then])
        return [then]
