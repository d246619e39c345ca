"""The fanotify feed on real events, on tmpfs and on ext4: which directories each kind of
change dirties, what it leaves out (outside SRC), and an overflow read as a gap."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from fsclone.changes.fanotify import WHOLE_TREE, FanotifyFeed, dirtied
from fsclone.changes.feed import DirtyDir, FeedGap
from fsclone.errors import UsageError
from tests.mounts import tmpfs
from tests.services import skip_or_fail


def feed_on(src: Path) -> FanotifyFeed:
    """A feed on ``src``, or a skip where fanotify is not to be had (not root, an old
    kernel); under CI a failure."""
    try:
        return FanotifyFeed(str(src))
    except UsageError as exc:
        skip_or_fail(str(exc))


@pytest.fixture(params=["tmpfs", "ext4"])
def base(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """A directory holding SRC and a sibling outside it, on tmpfs or on ext4 (the tests'
    tmp_path is on the root filesystem: checked)."""
    if request.param == "ext4":
        kind = subprocess.run(["stat", "-f", "-c", "%T", str(tmp_path)], capture_output=True,
                              text=True, check=True).stdout.strip()
        if kind != "ext2/ext3":
            pytest.skip(f"tmp_path is on {kind}, not ext4")
        yield tmp_path
        return
    with tmpfs(tmp_path / "mnt", "64m") as mnt:
        yield mnt


def read_all(feed: FanotifyFeed) -> set[DirtyDir]:
    """Everything the feed has queued now (a read waits for the first event)."""
    found = set(feed.read(2.0))
    while more := feed.read(0.05):
        found.update(more)
    return found


def run(script: str, cwd: Path) -> None:
    subprocess.run(["sh", "-ec", script], cwd=cwd, check=True)


def test_each_change_dirties_its_directories(base: Path) -> None:
    src = base / "src"
    (src / "a" / "b").mkdir(parents=True)
    (src / "c").mkdir()
    (base / "outside").mkdir()
    (src / "a" / "f").write_bytes(b"x")
    feed = feed_on(src)
    try:
        run("echo y >> a/f", src)
        assert read_all(feed) == {DirtyDir(b"a", False)}
        run("chmod 700 a/b", src)  # a directory's own change: itself and its parent
        assert read_all(feed) == {DirtyDir(b"a/b", False), DirtyDir(b"a", False)}
        run("mkdir c/new", src)
        assert read_all(feed) == {DirtyDir(b"c", False), DirtyDir(b"c/new", True)}
        run("mv a/b c/moved", src)  # both parents, and the directory moved in, whole
        assert read_all(feed) == {DirtyDir(b"a", False), DirtyDir(b"c", False),
                                  DirtyDir(b"c/moved", True)}
        run("mv a/f c/moved/g; ln c/moved/g c/moved/h; setfattr -n user.k -v 1 c/moved/h", src)
        assert read_all(feed) == {DirtyDir(b"a", False), DirtyDir(b"c/moved", False)}
        # a name in another directory: where the others are, nothing tells
        run("ln c/moved/g c/i", src)
        assert read_all(feed) == {DirtyDir(b"c", False), WHOLE_TREE}
        run("echo more >> c/moved/h", src)
        assert read_all(feed) == {DirtyDir(b"c/moved", False), WHOLE_TREE}
        run("touch -m -d @5 c/i", src)  # a new mtime: the copy is written anew too
        assert read_all(feed) == {DirtyDir(b"c", False), WHOLE_TREE}
        run("rm c/i", src)  # gone from here: its directory alone
        assert read_all(feed) == {DirtyDir(b"c", False)}
        run("chmod 700 .", src)  # SRC's own change: SRC alone (its parent is outside)
        assert read_all(feed) == {DirtyDir(b"", False)}
        run("touch ../outside/x; mkdir ../outside/d; chmod 700 ../outside", src)
        assert feed.read(0.3) == []
        run("mkdir c/gone; touch c/gone/x; rm -r c/gone", src)  # its own events: no handle
        assert read_all(feed) == {DirtyDir(b"c", False), DirtyDir(b"c/gone", True)}
        assert feed.events > 0
    finally:
        feed.close()


def test_names_are_bytes_as_they_are(base: Path) -> None:
    src = base / "src"
    src.mkdir()
    feed = feed_on(src)
    try:
        odd = b"new\nline \xff (deleted)"
        os.mkdir(os.fsencode(src) + b"/" + odd)
        os.mknod(os.fsencode(src) + b"/" + odd + b"/f")
        assert read_all(feed) == {DirtyDir(b"", False), DirtyDir(odd, True), DirtyDir(odd, False)}
    finally:
        feed.close()


def test_an_overflow_is_a_gap_and_the_feed_goes_on(base: Path) -> None:
    """Past the kernel's 16384 queued events, the overflow reads as FeedGap; the next read
    has the events queued since."""
    src = base / "src"
    src.mkdir()
    feed = feed_on(src)
    try:
        for i in range(20000):  # an event each: creates of distinct names are not merged
            os.mknod(src / f"f{i}")
        with pytest.raises(FeedGap, match="overflow"):
            read_all(feed)
        run("mkdir after", src)
        assert DirtyDir(b"after", True) in read_all(feed)
    finally:
        feed.close()


@pytest.mark.parametrize("name", [b"", b"a/b", b".."])
def test_an_event_without_a_plain_name_is_a_gap(name: bytes) -> None:
    with pytest.raises(FeedGap):
        dirtied(b"d", 0x100, name)
