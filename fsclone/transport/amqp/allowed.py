"""Which passes a worker node serves: only those whose roots its own config allows.

A pass reaches a standalone ``fsclone worker`` as an announcement on the broker, and the worker
runs as root: without this check, whoever could announce could have it copy any directory into
any other. ``ALLOWED_ROOTS`` lists (SRC, DST) prefixes; a pass is served when its source is at
or below one pair's SRC and its target at or below the same pair's DST, both resolved on this
node (a symlink in a root counts where it leads). Empty (the default) serves no pass.
"""

from __future__ import annotations

import dataclasses
import os

from fsclone.spec import PassSpec

Roots = tuple[tuple[str, str], ...]


def _below(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix.rstrip("/") + "/")


def admitted(spec: PassSpec, allowed: Roots) -> tuple[PassSpec | None, str]:
    """``spec`` with its roots resolved on this node, or None and why it is not served."""
    if not allowed:
        return None, "ALLOWED_ROOTS is empty on this node (set it to the roots it may serve)"
    src = os.path.realpath(spec.src)
    dst = os.path.realpath(spec.dst) if spec.dst else ""
    if not spec.dst and spec.op != "scan":
        return None, "it names no target"
    for allowed_src, allowed_dst in allowed:
        real_src, real_dst = os.path.realpath(allowed_src), os.path.realpath(allowed_dst)
        if _below(src, real_src) and (not dst or _below(dst, real_dst)):
            return dataclasses.replace(spec, src=src, dst=dst), ""
    shown = ", ".join(f"{s}:{d}" for s, d in allowed)
    return None, f"its roots are not below any pair of ALLOWED_ROOTS ({shown})"
