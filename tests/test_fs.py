"""fs/ on its own: xattrs read by name from several threads at once, symlink-safe, and the
steps and sides the errors leaving fs/ are marked with."""

from __future__ import annotations

import errno
import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from fsclone.fs import dirs, meta, remove, steps, threadcwd

NAMES = [f"f{i:02d}" for i in range(40)]


def _tree(root: Path, label: str) -> int:
    """A directory whose entries all carry ``user.which = label``, open at the returned fd:
    two such directories share their names and differ only in the values."""
    root.mkdir()
    for name in NAMES:
        (root / name).touch()
        os.setxattr(root / name, "user.which", label.encode())
    return dirs.open_dir(str(root))


def _in_threads(*bodies: Callable[[], None]) -> None:
    """Run each body in a thread of its own (never the test's: its cwd stays where it is) and
    re-raise the first failure."""
    failures: list[BaseException] = []

    def guarded(body: Callable[[], None]) -> None:
        try:
            body()
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=guarded, args=(body,)) for body in bodies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]


@contextmanager
def _switching_often() -> Iterator[None]:
    """Let the interpreter switch threads as often as it can, so a race shows in a few rounds."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


class _Refused:
    """A libc whose unshare fails, as under a seccomp filter that forbids it."""

    def unshare(self, flags: int) -> int:
        return -1


@pytest.fixture(params=["own cwd", "proc paths"])
def naming(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways fs.threadcwd names entries: a cwd per thread, and, where unshare is refused,
    ``/proc/self/fd`` paths."""
    if request.param == "proc paths":
        monkeypatch.setattr(threadcwd, "_libc", _Refused())
    return str(request.param)


def test_threads_reading_xattrs_by_name_each_get_their_own_directorys(
        tmp_path: Path, naming: str) -> None:
    fds = {label: _tree(tmp_path / label, label) for label in ("a", "b")}

    def reader(label: str) -> Callable[[], None]:
        want = {"user.which": label.encode()}

        def body() -> None:
            for _ in range(300):
                got = meta.read_xattrs_of(NAMES, fds[label], side=steps.SOURCE)
                assert got == [want] * len(NAMES), f"{label} read another directory's xattrs"
                assert meta.read_xattrs(NAMES[0], fds[label], side=steps.TARGET) == want
        return body

    try:
        with _switching_often():
            _in_threads(reader("a"), reader("b"))
    finally:
        for fd in fds.values():
            os.close(fd)


def test_xattrs_by_name_are_a_symlinks_own_never_its_targets(tmp_path: Path, naming: str) -> None:
    (tmp_path / "file").touch()
    os.setxattr(tmp_path / "file", "user.secret", b"s")
    (tmp_path / "link").symlink_to(tmp_path / "file")
    got: list[object] = []
    with dirs.opened(dirs.open_dir(str(tmp_path))) as fd:
        _in_threads(lambda: got.extend([
            meta.read_xattrs("link", fd, side=steps.SOURCE),
            meta.read_xattrs_of(["link", "file"], fd, side=steps.SOURCE)]))
    assert got == [{}, [{}, {"user.secret": b"s"}]]


def test_an_xattr_read_that_fails_is_marked_with_its_side(tmp_path: Path, naming: str) -> None:
    got: list[object] = []

    def body() -> None:
        with dirs.opened(dirs.open_dir(str(tmp_path))) as fd:
            got.extend(meta.read_xattrs_of(["gone"], fd, side=steps.TARGET))
            with pytest.raises(FileNotFoundError) as raised:
                meta.read_xattrs("gone", fd, side=steps.SOURCE)
            got.append(raised.value)

    _in_threads(body)
    assert [steps.step_of(exc) for exc in got if isinstance(exc, OSError)] == [
        (steps.XATTR, steps.TARGET), (steps.XATTR, steps.SOURCE)]


def test_removal_errors_are_marked_as_a_remove_on_the_target(tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "sub").mkdir()
    with dirs.opened(dirs.open_dir(str(tmp_path))) as fd:
        with pytest.raises(FileNotFoundError) as unlinked:
            remove.unlink("gone", fd)
        with pytest.raises(OSError) as rmdired:
            remove.rmdir("full", fd)
        with pytest.raises(IsADirectoryError) as flat:
            remove.remove_flat_tree(fd, "full")
    assert rmdired.value.errno == errno.ENOTEMPTY
    assert (tmp_path / "full" / "sub").is_dir()
    for raised in (unlinked, rmdired, flat):
        assert steps.step_of(raised.value) == (steps.REMOVE, steps.TARGET)


def test_a_flat_tree_goes_and_a_symlink_in_it_leaves_its_target_alone(tmp_path: Path) -> None:
    (tmp_path / "outside").write_text("kept")
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "file").touch()
    (flat / "link").symlink_to(tmp_path / "outside")
    with dirs.opened(dirs.open_dir(str(tmp_path))) as fd:
        assert remove.remove_flat_tree(fd, "flat") == 3
    assert not flat.exists()
    assert (tmp_path / "outside").read_text() == "kept"


@pytest.mark.parametrize(("step", "apply"), [
    pytest.param(steps.OWNER, lambda fd, st: meta.apply_owner(fd, st), marks=pytest.mark.skipif(
        not meta.IS_ROOT, reason="only root chowns")),
    (steps.MODE, lambda fd, st: meta.apply_mode(fd, st)),
    (steps.XATTR, lambda fd, st: meta.apply_xattrs(fd, {"user.x": b"1"}, {})),
    (steps.TIMES, lambda fd, st: meta.apply_times(fd, st)),
])
def test_a_metadata_change_that_fails_is_marked_with_its_step(
        tmp_path: Path, step: str, apply: Callable[[int, os.stat_result], None]) -> None:
    st = os.stat(tmp_path)
    fd = os.open(tmp_path, os.O_RDONLY)
    os.close(fd)  # a closed descriptor: every change to it fails, EBADF
    with pytest.raises(OSError) as raised:
        apply(fd, st)
    assert raised.value.errno == errno.EBADF
    assert steps.step_of(raised.value) == (step, steps.TARGET)


def test_a_metadata_change_on_an_entry_not_the_one_compared_is_a_stat_on_the_target(
        tmp_path: Path) -> None:
    """apply_at changes nothing on an entry that is gone or not the inode compared, and says
    which step refused: the target's stat."""
    (tmp_path / "compared").touch()
    (tmp_path / "swapped").touch()
    st = os.lstat(tmp_path / "compared")
    with dirs.opened(dirs.open_dir(str(tmp_path))) as fd:
        with pytest.raises(meta.EntryChanged) as swapped:
            meta.apply_at("swapped", fd, st, {}, {}, compared=st)
        with pytest.raises(FileNotFoundError) as gone:
            meta.apply_at("gone", fd, st, {}, {}, compared=st)
    for raised in (swapped, gone):
        assert steps.step_of(raised.value) == (steps.STAT, steps.TARGET)
