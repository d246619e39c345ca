"""Round trips a file, counted by faultfs: on a network filesystem every request is one, and
a pass is as fast as the requests it needs. Both sides on faultfs, dentries cached and
attributes not (a cold client), as the latency benchmark mounts them."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from faultfs import FaultFS
from fsclone.fs.meta import UNTOUCHED_NS
from tests.clirun import fsclone_json
from tests.faultmount import require_faultfs
from tests.fstree import assert_same_tree
from tests.services import wait_for

#: modes a copy under a temp name must end with, set-id and group/other-writable ones too
MODES = (0o644, 0o600, 0o755, 0o640, 0o664, 0o666, 0o4755, 0o2750, 0o1777, 0o000)
#: what the filesystem profile's probe of a target without O_TMPFILE costs a pass in SETATTRs
PROBE_SETATTRS = 4


@contextlib.contextmanager
def mounted(tmp_path: Path) -> Iterator[tuple[FaultFS, FaultFS]]:
    require_faultfs()
    for name in ("src", "dst", "src.b", "dst.b"):
        (tmp_path / name).mkdir(exist_ok=True)
    with FaultFS(tmp_path / "src.b", tmp_path / "src", entry_timeout=60, attr_timeout=0) as s, \
            FaultFS(tmp_path / "dst.b", tmp_path / "dst", entry_timeout=60, attr_timeout=0) as d:
        yield s, d


def copy(tmp_path: Path, op: str = "copy") -> dict[str, Any]:
    rc, out = fsclone_json("pass", op, tmp_path / "src", tmp_path / "dst",
                           state=tmp_path / "state")
    assert rc == 0, out
    return out


def test_a_new_file_under_a_temp_name_is_made_with_its_mode_and_never_chmodded(
        tmp_path: Path) -> None:
    """faultfs has no O_TMPFILE: new files go through a temp name. Made with their mode, they
    need a chown and their times, no chmod, where the mode has no set-id bit (which chown
    clears) and no group or other write (which wait for the owner)."""
    with mounted(tmp_path) as (_, dst):
        src = tmp_path / "src.b"
        for mode in MODES:
            (src / f"m{mode:o}").write_bytes(b"x" * mode)
            os.chmod(src / f"m{mode:o}", mode)
        (src / "plain").mkdir()
        for n in range(20):
            (src / "plain" / f"f{n}").write_bytes(b"y" * n)
        dst.reset()
        copy(tmp_path)
        setattrs = dst.counters()["SETATTR"]
    assert_same_tree(src, tmp_path / "dst.b")
    # two a file (owner, times), one more where chown or the temp cannot give the mode;
    # three each for the two directories (owner, mode, times) and the root's times restored
    # at the end of the pass; once a pass, the profile's probe (fs.profile): its file stamped
    # three times in a private temp directory, and the root's times put back after it
    chmodded = sum(1 for m in MODES if m & 0o7022)
    assert setattrs <= 2 * (20 + len(MODES)) + chmodded + 2 * 3 + 1 + PROBE_SETATTRS


def test_an_unchanged_file_older_than_its_copy_is_compared_without_its_xattrs(
        tmp_path: Path) -> None:
    with mounted(tmp_path) as (srcfs, dstfs):
        src = tmp_path / "src.b"
        for n in range(30):
            (src / f"f{n}").write_bytes(b"z" * n)
        os.setxattr(src / "f1", "user.tag", b"one")
        made = max(os.lstat(p).st_ctime_ns for p in src.iterdir())
        wait_for(lambda: time.time_ns() > made + UNTOUCHED_NS + 10**8, 10,
                 "the source to be older than its copy will be")
        copy(tmp_path)
        srcfs.reset()
        dstfs.reset()
        counters = copy(tmp_path)["counters"]
        assert counters["unchanged"] == 30 and "updated" not in counters
        listed = srcfs.counters()["LISTXATTR"] + dstfs.counters()["LISTXATTR"]
        assert listed <= 2  # the directory's own, no file's
        # a change of the source's xattrs moves its ctime: that file is compared, and mended
        os.setxattr(tmp_path / "src" / "f1", "user.tag", b"two")
        assert copy(tmp_path, "sync")["counters"]["updated"] == 1
    assert os.getxattr(tmp_path / "dst.b" / "f1", "user.tag") == b"two"
    assert_same_tree(src, tmp_path / "dst.b")


def test_a_huge_directory_has_each_source_entry_stat_ed_once(tmp_path: Path) -> None:
    """The chunk that lists a huge directory keeps its first slice and hands out the rest by
    name: each slice stats its own entries, so the listing chunk does not stat them before
    (serially, on the path every slice waits on)."""
    entries, size = 600, 100
    with mounted(tmp_path) as (srcfs, _):
        src = tmp_path / "src.b"
        (src / "huge").mkdir()
        for n in range(entries):
            (src / "huge" / f"f{n:04d}").write_bytes(b"")
        made = max(os.lstat(p).st_ctime_ns for p in (src / "huge").iterdir())
        wait_for(lambda: time.time_ns() > made + UNTOUCHED_NS + 10**8, 10,
                 "the source to be older than its copy will be")
        copy(tmp_path)  # compared by their lstats alone from now on (meta.untouched)
        srcfs.reset()
        rc, out = fsclone_json("pass", "sync", tmp_path / "src", tmp_path / "dst",
                               state=tmp_path / "state", dir_slice=size)
        assert rc == 0, out
        assert out["counters"]["unchanged"] == entries, out
        counted = srcfs.counters()
    assert_same_tree(src, tmp_path / "dst.b")
    # an lstat is two GETATTRs here (dentries stay cached, attributes do not): the entry's,
    # and its directory's for the search permission the kernel checks (default_permissions).
    # The directories' own and the profile's probes are about a hundred more; stat-ed twice,
    # the 500 entries handed out made a thousand more
    assert counted["GETATTR"] + counted["LOOKUP"] <= 2 * entries + 150, counted
