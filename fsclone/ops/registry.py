"""Op name → function. Every chunk's ``op`` must be one of these."""

from __future__ import annotations

from collections.abc import Callable

from fsclone.chunk import Chunk, Result
from fsclone.ops.context import Context
from fsclone.ops.copy import run_copy, run_sync
from fsclone.ops.delete import run_delete, run_unlink
from fsclone.ops.dirmeta import run_cleanup, run_dirmeta
from fsclone.ops.finalize import run_finalize
from fsclone.ops.mtime import run_mtime
from fsclone.ops.ranges import run_range
from fsclone.ops.scan import run_scan
from fsclone.ops.subtree import run_count, run_prune, run_rmdir
from fsclone.ops.verify import run_verify, run_verify_range

Op = Callable[[Context, Chunk], Result]

OPS: dict[str, Op] = {
    "copy": run_copy,
    "sync": run_sync,
    "range": run_range,
    "finalize": run_finalize,
    "dirmeta": run_dirmeta,
    "cleanup": run_cleanup,
    "delete": run_delete,
    "unlink": run_unlink,
    "count": run_count,
    "prune": run_prune,
    "rmdir": run_rmdir,
    "mtime": run_mtime,
    "scan": run_scan,
    "verify": run_verify,
    "verify_range": run_verify_range,
}
