"""Hard links without a global map, through the pass's staging directory at the target root.

The first worker to meet a source inode of several links publishes its target copy as a link
named after the source (dev, ino) in the staging directory; every other name of that inode is
linked from there. ``link()`` failing with EEXIST is the race arbiter: exactly one copy wins.
An up-to-date target file is claimed for its source inode the same way (see
fsclone.fs.staging.claim). The staging directory goes at the end of the pass (fsclone.ops.dirmeta).
"""

from __future__ import annotations

import os

from fsclone.fs import staging as staging_links
from fsclone.fs.source import SourceDir
from fsclone.fs.target import TargetDir
from fsclone.ops.context import Context, Outcome
from fsclone.stats import counters as C


def carry(ctx: Context, out: Outcome, src: SourceDir, tgt: TargetDir, name: str,
          st: os.stat_result, current: os.stat_result | None, layout: bytes | None = None,
          ) -> os.stat_result | None:
    """Give ``name`` (source lstat ``st``) its place in the link group of its source inode.
    ``current``: the target's lstat when its data is current; ``layout``: the source's Lustre
    layout, for a copy. Returns it when the target was claimed for the inode and only its
    metadata remains to compare, else None."""
    staging = ctx.staging_dir()
    key = f"{st.st_dev:x}-{st.st_ino:x}"
    if current is not None:
        if staging_links.claim(tgt, name, staging, key, current):
            return current
        canon = staging.lookup(key)
        if canon is not None and canon.st_ino == current.st_ino:
            out.count(C.SAME)
            return None
    else:
        canon = staging.lookup(key)
    if canon is None:
        out.act("copy", out.path(name))
        tmp, written = tgt.copy_to_temp(src, name, st, layout)
        if staging_links.publish_linked(tgt, tmp, staging, key, name):
            out.count(C.COPIED)
            out.count(C.BYTES, written)
            return None
        # another worker published this inode first: link from there
    out.act("link", out.path(name))
    staging_links.link_from(tgt, staging, key, name)
    out.count(C.CREATED)
    return None
