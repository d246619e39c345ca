"""The coordinator: seeds each phase of a pass, applies results, ends a phase when nothing is
outstanding.

Termination by counting: every chunk is recorded as outstanding before it is submitted, and
leaves that set when its result is applied; a result for a chunk no longer outstanding is a
duplicate (at-least-once delivery) and is ignored, children and all. Barriers (groups) hold a
chunk back until all their members are done: a split directory's ``dirmeta``, a large file's
``finalize``.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from fsclone.chunk import Chunk, ItemError, ManifestRow, Result
from fsclone.engine.retry import Seed
from fsclone.engine.sweep import remove_own_temps
from fsclone.engine.worker import worker_name
from fsclone.errors import GuardError
from fsclone.lifecycle import DONE, INTERRUPTED, PHASES, REFUSED, Summary
from fsclone.process import stop_signals_ignored
from fsclone.signing import Signer, may_issue
from fsclone.spec import PassSpec
from fsclone.state.record import PassStore
from fsclone.stats import counters as C
from fsclone.stats.snapshot import Snapshot
from fsclone.transport.base import Transport

#: seconds between commits of applied results (see Coordinator._drain)
COMMIT_EVERY = 0.05
#: tries of a chunk whose op raised (or whose worker died) before it is listed as failed
MAX_ATTEMPTS = 3
#: phases that change the target, skipped by a dry run
_WRITING_PHASES = {"unlink", "cleanup"}
#: whom the counters of a chunk that failed as a whole (its worker unknown) are credited to
COORDINATOR = worker_name("coordinator")


@dataclass
class Hooks:
    """How the coordinator reports while it runs; the CLI decides where it goes."""

    #: once, as a run starts: the pass and its counters then (not 0 when it is resumed)
    start: Callable[[PassSpec, dict[str, int]], None] = lambda spec, counters: None
    progress: Callable[[dict[str, int], int], None] = lambda counters, outstanding: None
    action: Callable[[str], None] = lambda line: None
    note: Callable[[str], None] = lambda line: None
    manifest: Callable[[list[ManifestRow]], None] = lambda rows: None
    interval: float = 0.5
    #: totals per pass and worker for the stats sinks, every ``stats_interval`` and at the end;
    #: must return at once (see fsclone.stats.reporter)
    stats: Callable[[Snapshot], None] = lambda snapshot: None
    stats_interval: float = 10.0


class Coordinator:
    def __init__(self, store: PassStore, transport: Transport, hooks: Hooks | None = None,
                 seed: Seed | None = None) -> None:
        self.store = store
        self.transport = transport
        self.hooks = hooks or Hooks()
        self.seed = seed
        self._next_stats = 0.0
        #: signs the chunks that remove or publish entries as they are issued (the transport
        #: knows how its workers learn the key)
        self.signer = Signer(transport.key)
        #: under a rate limit, at most this many chunks run at once (each takes that share of
        #: the limits: fsclone.ops.pace; 0: no limit, set by :meth:`run`); the others wait
        #: here, outstanding in the record
        self._slots = 0
        self._held: deque[Chunk] = deque()
        self._running = 0

    def run(self) -> Summary:
        """Run the phases left. Every way out leaves the record telling the truth: done,
        refused (after the cleanup phase: nothing of the pass's own stays in the target), or
        interrupted (resumable, its staging kept for the resume)."""
        store, spec = self.store, self.store.spec
        store.begin_run()
        earlier = dict(store.counters)
        self.hooks.start(spec, earlier)
        self._slots = spec.rate_slots if spec.bwlimit or spec.max_rate else 0
        self.transport.start(spec)
        stopping = contextlib.ExitStack()
        try:
            for index, phase in enumerate(PHASES[spec.op]):
                if index >= store.phase and not (spec.dry_run and phase in _WRITING_PHASES):
                    self._phase(index, phase)
            self.transport.completed()
            store.set_status(DONE)
        except GuardError:
            store.set_status(REFUSED)
            self._clean_up()
            raise
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):  # a second signal must not cut this short
                stopping.enter_context(stop_signals_ignored())
            store.set_status(INTERRUPTED)
            raise
        finally:
            with stopping:
                try:
                    # every run's end rewrites the list of released files left, all runs'
                    # sorted
                    released = store.write_released()
                    self._report()  # the final totals, before the transport stops
                finally:
                    self.transport.stop()
        errors = store.errors(limit=20)
        return Summary(store.status, dict(store.counters), errors,
                       store.counters.get(C.ERRORS, 0), store.active - store.ran,
                       runs=store.runs, active=store.active, earlier=earlier,
                       skipped=store.skipped(limit=20),
                       released=str(released) if released else "")

    def _phase(self, index: int, phase: str) -> None:
        """Run one phase to its end: seed it, or resubmit what a dead run left outstanding. A
        resubmitted chunk keeps its attempt (a resume is not a try of its own) but is marked
        redone: the dead run may have left its temp files."""
        store = self.store
        if store.outstanding:
            self.hooks.note(f"resuming {store.outstanding} outstanding chunks")
            pending = [c.redone() for c in store.outstanding_chunks()]
            for chunk in pending:
                store.replace_chunk(chunk)
        else:
            if phase == "cleanup":
                remove_own_temps(store.spec.dst, store.spec.id, store.redone())
            pending = self._seed(phase)
            store.add_chunks(pending)
        store.commit()
        self._submit(pending)
        self._drain()
        store.set_phase(index + 1)
        store.commit()

    def _clean_up(self) -> None:
        """The cleanup phase of a pass that ends early (refused): its hard-link staging
        directory goes and the target root gets its times back, as at a normal end."""
        phases = PHASES[self.store.spec.op]
        if "cleanup" in phases and not self.store.spec.dry_run:
            index = phases.index("cleanup")
            if self.store.phase <= index:
                self._phase(index, "cleanup")

    def _seed(self, phase: str) -> list[Chunk]:
        spec = self.store.spec
        if phase == "walk" and self.seed is not None:
            for group in self.seed.groups:
                self.store.add_group(group)
            return list(self.seed.chunks)
        if phase == "walk":
            return [Chunk(op=spec.op, path="")]
        if phase == "cleanup":
            return [Chunk(op="cleanup", path="")]
        planned = self.store.planned_entries()
        limit = spec.max_delete
        if limit is not None and planned > limit:
            raise GuardError(f"the pass would delete {planned} entries, more than --max-delete "
                             f"{limit}: nothing was deleted")
        uncounted = self.store.errors_of("count") if limit is not None else 0
        if uncounted:
            raise GuardError(f"{uncounted} directories planned for deletion could not be "
                             f"counted, so --max-delete {limit} cannot be checked: nothing was "
                             "deleted")
        step = spec.dir_slice
        return [Chunk(op="unlink", path=path, names=tuple(names[i:i + step]))
                for path, names in self.store.planned_deletions()
                for i in range(0, len(names), step)]

    def _drain(self) -> None:
        """Apply results until nothing is outstanding. Results are committed in batches (at
        most COMMIT_EVERY seconds apart, one transaction each): a commit per result would cost
        the coordinator more CPU than the workers spend on a small directory. A crash loses at
        most the uncommitted batch, whose chunks are still outstanding and are redone; the
        transport acknowledges results only after the commit that holds them."""
        store, hooks = self.store, self.hooks
        next_report = 0.0
        dirty, last_commit = False, time.monotonic()
        while store.outstanding:
            results = self.transport.poll(COMMIT_EVERY if dirty else 0.2)
            lost = self.transport.lost()
            submit: list[Chunk] = []
            for result in results:
                submit.extend(self._apply(result))
            self._ended(len(lost))
            if lost:
                store.add_errors(lost)
                store.add_counters({C.ERRORS: len(lost)}, COORDINATOR)
            dirty = dirty or bool(results or lost)
            now = time.monotonic()
            if dirty and (now - last_commit >= COMMIT_EVERY or not store.outstanding):
                store.commit()
                self.transport.settle()
                dirty, last_commit = False, now
            if submit or self._held:
                self._submit(submit)
            if now >= next_report:
                hooks.progress(store.counters, store.outstanding)
                next_report = now + hooks.interval
            if now >= self._next_stats:
                self._report()
        hooks.progress(store.counters, store.outstanding)

    def _submit(self, chunks: list[Chunk]) -> None:
        """Hand chunks to the workers, those only a plan may issue signed for this pass; under
        a rate limit, only as many as there are free slots (the rest as slots free up)."""
        if self._slots:
            self._held.extend(chunks)
            free = min(self._slots - self._running, len(self._held))
            chunks = [self._held.popleft() for _ in range(max(free, 0))]
            self._running += len(chunks)
        if chunks:
            pass_id = self.store.spec.id
            self.transport.submit([self.signer.sign(pass_id, c) for c in chunks])

    def _ended(self, chunks: int) -> None:
        """Chunks that ran are done (or lost): under a rate limit, their slots are free for
        the chunks held back."""
        if self._slots:
            self._running = max(self._running - chunks, 0)

    def _issued(self, result: Result) -> None:
        """Drop (and list) what the result hands on that its op may not: a chunk that removes
        or publishes entries comes only from the op that plans or starts that removal."""
        chunk = result.chunk
        refused = [c for c in (*result.children, *(g.then for g in result.groups))
                   if not may_issue(chunk.op, c.op)]
        if not refused:
            return
        result.children = [c for c in result.children if c not in refused]
        result.groups = [g for g in result.groups if g.then not in refused]
        result.errors.extend(ItemError(c.subject, c.op, 0, f"refused: a {chunk.op} chunk "
                                       f"cannot hand on a {c.op} chunk") for c in refused)
        result.counters[C.ERRORS] = result.counters.get(C.ERRORS, 0) + len(refused)

    def _report(self) -> None:
        """Hand the stats sinks a snapshot. The last one, after the transport's last result,
        has the queue's depth too, so no series of the pass ends at a value it no longer has."""
        store = self.store
        self.hooks.stats(Snapshot.of_pass(
            store.spec, store.status, store.phase, time.time(), store.counters, store.workers,
            store.outstanding, self.transport.depth(),
            runs=store.runs, ran=store.ran, active=store.active))
        self._next_stats = time.monotonic() + self.hooks.stats_interval

    def _apply(self, result: Result) -> list[Chunk]:
        """Record one result; returns the chunks it releases (children, retries, barriers)."""
        store, chunk = self.store, result.chunk
        if chunk.redo:  # applied or not, the run may have left temps: swept before cleanup
            store.add_redone(chunk.path)
        if not store.finish_chunk(chunk.id):
            return []  # a duplicate delivery: its first result was applied already
        self._ended(1)
        if result.failed:
            if chunk.attempt + 1 < MAX_ATTEMPTS:
                retry = chunk.retry()
                store.add_chunks([retry])
                self.hooks.note(f"retrying chunk {chunk.op} {chunk.path!r}: {result.failed}")
                return [retry]
            why = f"chunk failed {chunk.attempt + 1} times: {result.failed}"
            result = Result(chunk=chunk, counters={C.ERRORS: 1}, worker=result.worker,
                            errors=[ItemError(chunk.subject, chunk.op, 0, why)])
        self._issued(result)
        if result.errors and chunk.group:
            self._fail_member(result, chunk.group)
        store.add_counters(result.counters, result.worker or COORDINATOR)
        store.add_errors(result.errors)
        store.add_deletions(result.deletions)
        store.add_skipped(result.skipped)
        store.add_released(result.released)
        for line in result.actions:
            self.hooks.action(line)
        if result.manifest:
            self.hooks.manifest(result.manifest)
        for group in result.groups:
            store.add_group(group)
        released = list(result.children)
        handed_over = any(g.then.group == chunk.group for g in result.groups)
        if chunk.group and not handed_over:
            released.extend(self._complete_member(chunk.group))
        store.add_chunks(released)
        return released

    def _fail_member(self, result: Result, group_id: str) -> None:
        """Mark the barrier failed; an error its first failure listed already (the same file,
        failing in another piece) is dropped from ``result`` rather than listed again."""
        first = result.errors[0].path
        if self.store.fail_member(group_id, first):
            return
        repeated = [e for e in result.errors if e.path == first]
        result.errors = [e for e in result.errors if e.path != first]
        result.counters[C.ERRORS] = result.counters.get(C.ERRORS, 0) - len(repeated)

    def _complete_member(self, group_id: str) -> list[Chunk]:
        """The chunk a finished barrier releases, if any (the caller records it outstanding)."""
        then = self.store.complete_member(group_id)
        if then is None:
            return []
        if then.op == "barrier":  # a hand-over placeholder: complete its own group at once
            return self._complete_member(then.group) if then.group else []
        return [then]
