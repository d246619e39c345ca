"""What every op needs in a worker: the pass spec, the two roots opened once, the filters, and a
Result builder that turns OS errors into listed item errors."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from fsclone.chunk import Chunk, ItemError, Result, join
from fsclone.filters import Filters
from fsclone.fs import dirs, inodeflags, meta, steps
from fsclone.fs.source import SourceDir
from fsclone.fs.staging import open_staging
from fsclone.fs.target import TargetDir
from fsclone.fs.unnamed import UnnamedFiles
from fsclone.ops.pace import Pace
from fsclone.schema import LINKS_PREFIX
from fsclone.spec import PassSpec
from fsclone.stats import counters as C
from fsclone.text import printable

if TYPE_CHECKING:
    from fsclone.fs.lustre.create import LustreCreate


class Context:
    """Per-worker state for one pass. Roots are opened once; every other open is relative."""

    def __init__(self, spec: PassSpec) -> None:
        self.spec = spec
        self.filters = Filters(spec)
        self.src_root = dirs.open_root(spec.src)
        #: the source root's device, which ``--one-file-system`` keeps to
        self.src_dev = os.fstat(self.src_root).st_dev
        #: the recorded mount points of the source (see fsclone.engine.layout)
        self.source_mounts = frozenset(spec.source_mounts)
        self.dst_root: int | None = None
        try:
            self.dst_root = dirs.open_root(spec.dst)
        except FileNotFoundError:
            if not spec.dry_run:
                raise
        #: the target root's identity: its device, for what the kernel's copy between the two
        #: learns (fs.data), and with its inode, the directory a walk must never enter
        dst_st = os.fstat(self.dst_root) if self.dst_root is not None else None
        self.dst_dev, self.dst_ino = (dst_st.st_dev, dst_st.st_ino) if dst_st else (0, 0)
        self.staging = LINKS_PREFIX + spec.id
        #: what each side's filesystem holds and does, found by the coordinator at the pass's
        #: start (fsclone.fs.profile): no worker probes
        self.profile = spec.profile
        self.unnamed = UnnamedFiles(self.profile.dst.tmpfile is not False)
        #: what each side holds of project IDs and flags; the source's, what is carried
        self.src_flags, self.dst_flags = inodeflags.sides(self.profile.src, self.profile.dst)
        src_lustre = self.profile.src.kind == "lustre"
        dst_lustre = self.profile.dst.kind == "lustre"
        #: Lustre → Lustre with ``--layout keep``: new files get their source's layout, and
        #: directories their own default layouts (None: the target's defaults apply)
        self.layouts: LustreCreate | None = None
        if src_lustre and dst_lustre and spec.layout == "keep":
            from fsclone.fs.lustre.create import LustreCreate  # the layout codec: Lustre only

            self.layouts = LustreCreate(dict(spec.pool_map), spec.target_pools)
        #: whether source files' layouts are read before their data: to carry them, or to
        #: leave HSM-released ones unread (``--released skip``); decided here, once, so a
        #: file elsewhere costs one test of this
        self.skip_released = src_lustre and spec.released == "skip"
        self.reads_layouts = self.skip_released or self.layouts is not None
        if dst_lustre:  # no O_TMPFILE on Lustre (LU-9512): spare each new file the try
            self.unnamed.supported = False
        #: when a target time counts as the source's (see fs.meta.TimeRule)
        self.times = self._time_rule()
        self._staging: TargetDir | None = None
        #: this worker's share of the pass's rate limits, None without one
        self.pace = Pace.of(spec)

    def _time_rule(self) -> meta.TimeRule:
        """When a target time counts as the source's: at the coarser step of the two sides,
        in the target's range, as their profiles say (nothing known where the target was not
        probed). A verify forgives the step, not a time beyond the target's range: that one
        it reports."""
        window = self.spec.modify_window_ns
        src, dst = self.profile.src, self.profile.dst
        if dst.time_step_ns is None:
            return meta.TimeRule(window)
        step = max(dst.time_step_ns, src.time_step_ns or 1)
        if self.spec.op == "verify":
            return meta.TimeRule(window, step_ns=step)
        return meta.TimeRule.of(window, dst.time_low_ns, dst.time_high_ns, step)

    def is_target_root(self, st: os.stat_result) -> bool:
        """Whether a source directory is the target's root (bind-mounted into the source):
        walking into it would copy the copy without end. Ints compared, once per directory."""
        return st.st_dev == self.dst_dev and st.st_ino == self.dst_ino

    def staging_dir(self) -> TargetDir:
        """The hard-link staging directory at the target root, made on first use."""
        if self._staging is None:
            assert self.dst_root is not None
            self._staging = self.target_dir(open_staging(self.dst_root, self.staging))
        return self._staging

    def target_dir(self, fd: int, tag: str = "") -> TargetDir:
        """The target directory ``fd`` as a TargetDir of this pass (``tag``: see there)."""
        return TargetDir(fd, self.dst_flags, self.spec.id, self.unnamed, self.dst_dev, tag,
                         self.profile.dst, self.layouts)

    def source_dir(self, fd: int) -> SourceDir:
        """The source directory ``fd`` as a SourceDir of this pass."""
        return SourceDir(fd, self.src_flags)

    def close(self) -> None:
        staging = self._staging.fd if self._staging is not None else None
        for fd in (self.src_root, self.dst_root, staging):
            if fd is not None:
                os.close(fd)

    @contextmanager
    def open_dirs(self, relpath: str, out: Outcome | None = None,
                  ) -> Iterator[tuple[int, int | None]]:
        """Source and target directory fds for ``relpath``; the target is None only in a dry run
        when it does not exist yet. With ``out`` (a chunk of ``--files-from``), the target
        directories missing on the way are made (not in a dry run), and counted there."""
        try:
            sfd = dirs.open_path(self.src_root, relpath)
        except OSError as exc:
            steps.mark(exc, steps.OPEN, steps.SOURCE)
            raise
        dfd: int | None = None
        try:
            if self.dst_root is not None:
                try:
                    if out is not None and not self.spec.dry_run:
                        dfd, made = dirs.make_path(self.dst_root, relpath)
                        out.count(C.CREATED, made)
                    else:
                        dfd = dirs.open_path(self.dst_root, relpath)
                except OSError as exc:
                    if not (self.spec.dry_run and isinstance(exc, FileNotFoundError)):
                        steps.mark(exc, steps.OPEN, steps.TARGET)
                        raise
            yield sfd, dfd
        finally:
            os.close(sfd)
            if dfd is not None:
                os.close(dfd)


class Outcome:
    """Builds a chunk's Result: counters, item errors, children, actions."""

    def __init__(self, ctx: Context, chunk: Chunk) -> None:
        self.ctx = ctx
        self.chunk = chunk
        self.result = Result(chunk=chunk)
        #: whether actions are recorded (see :meth:`act`): a check that spares the hot path
        #: the joining of paths nobody reads
        self.shows = ctx.spec.dry_run or ctx.spec.verbose

    def count(self, key: str, n: int = 1) -> None:
        c = self.result.counters
        c[key] = c.get(key, 0) + n

    def fail(self, path: str, exc: OSError | str, op: str | None = None) -> None:
        """List an item error; the rest of the chunk goes on."""
        if isinstance(exc, OSError):
            step, side = steps.step_of(exc)
            err = ItemError(path, op or self.chunk.op, exc.errno or 0, exc.strerror or str(exc),
                            step, side)
        else:
            err = ItemError(path, op or self.chunk.op, 0, exc)
        self.result.errors.append(err)
        self.count(C.ERRORS)

    def act(self, verb: str, path: str, detail: str = "") -> None:
        """Record what was (or, in a dry run, would be) done, when someone will read it."""
        if self.shows:
            self.result.actions.append(f"{verb} {printable(path)}{' ' + detail if detail else ''}")

    def child(self, op: str, relpath: str, **kw: object) -> Chunk:
        chunk = Chunk(op=op, path=relpath, **kw)  # type: ignore[arg-type]
        self.result.children.append(chunk)
        return chunk

    def path(self, name: str) -> str:
        return join(self.chunk.path, name)


def file_of(chunk: Chunk) -> str:
    """The file a chunk about one large file (range, finalize, verify_range) is about."""
    return chunk.names[0] if chunk.names else ""


def file_path(chunk: Chunk) -> str:
    """That file's path: where such a chunk's errors are listed."""
    return join(chunk.path, file_of(chunk))


DirBody = Callable[[Context, Outcome, int, int], None]


def on_both_dirs(body: DirBody,
                 where: Callable[[Chunk], str] = lambda chunk: chunk.path or ".",
                 ) -> Callable[[Context, Chunk], Result]:
    """Make an op from ``body(ctx, out, sfd, dfd)``, which works on a chunk's source and target
    directory: an OS error that escapes it is an item error at ``where(chunk)`` (the directory,
    unless the op says which entry), and a target not there (a dry run ahead of its copy) leaves
    nothing to do."""

    def run(ctx: Context, chunk: Chunk) -> Result:
        out = Outcome(ctx, chunk)
        try:
            with ctx.open_dirs(chunk.path) as (sfd, dfd):
                if dfd is not None:
                    body(ctx, out, sfd, dfd)
        except OSError as exc:
            out.fail(where(chunk), exc)
        return out.result

    run.__doc__ = body.__doc__
    return run
