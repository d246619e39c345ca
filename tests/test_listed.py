"""``--files-from``: exactly the listed paths, as rsync takes them; nothing outside SRC; the list
is part of the request."""

from __future__ import annotations

import dataclasses
import os
import subprocess
from pathlib import Path

import pytest

from fsclone.state.directory import pass_ids
from fsclone.stats import counters as C
from tests.clirun import fsclone, fsclone_json
from tests.fstree import assert_same_tree, snapshot, tree_diffs
from tests.midpass import held, many_files
from tests.test_resume import _interrupt, _once_unlocked

#: entries as an admin's list holds them: nested files, a directory alone, one with its
#: entries (one level), comments and blank lines, a path from ./ and an absolute one below SRC
#: (written in by :func:`_list`), a symlink to a directory, a name with a newline
LISTED = ["a/b/c/x", "d", "# a comment", "", "; another", "f/", "./a/b/y", "{src}/top",
          "lnk", "odd\nname"]


def _tree(src: Path) -> None:
    for rel in ("a/b/c/x", "a/b/y", "a/b/unlisted", "d/e/z", "top", "f/g", "f/h/i/j",
                "odd\nname", "unlisted"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(rel)
    (src / "d").chmod(0o750)
    os.symlink("a", src / "lnk")
    for sub in ("a/b", "a", "f/h", "f", "d"):  # times the copies must carry
        os.utime(src / sub, ns=(1_500_000_000_000_000_000, 1_500_000_000_000_000_000))


def _list(path: Path, src: Path, entries: list[str], sep: str) -> Path:
    path.write_bytes(sep.join(e.format(src=src) for e in entries).encode() + sep.encode())
    return path


def _rsync(src: Path, dst: Path, listing: Path, nul: bool) -> None:
    """rsync's copy of the list (it takes an absolute path as relative to SRC: given so). It
    exits 23 for the missing entry."""
    data = listing.read_bytes().replace(os.fsencode(src) + b"/", b"")
    rsync_list = listing.with_suffix(".rsync")
    rsync_list.write_bytes(data)
    subprocess.run(["rsync", "-aHAX", *(["--from0"] if nul else []),
                    f"--files-from={rsync_list}", f"{src}/", f"{dst}/"],
                   check=False, capture_output=True)


@pytest.mark.parametrize("sep", ["\n", "\0"], ids=["lines", "nul"])
def test_a_list_copies_what_rsync_copies(tmp_path: Path, sep: str) -> None:
    src, state = tmp_path / "src", tmp_path / "state"
    _tree(src)
    entries = [e for e in LISTED if sep == "\0" or "\n" not in e]
    listing = _list(tmp_path / "list", src, [*entries, "missing"], sep)
    _rsync(src, tmp_path / "rsync", listing, nul=sep == "\0")
    rc, out = fsclone_json("pass", "copy", "--files-from", listing, src, tmp_path / "dst",
                           state=state)
    assert rc == 1, out
    assert [(e["path"], e["message"]) for e in out["errors"]] == [
        ("missing", "listed in --files-from, not in the source")]
    made = snapshot(tmp_path / "dst", atime=False)
    assert sorted(made) == sorted(snapshot(tmp_path / "rsync", atime=False))
    # each entry as the source has it (rsync leaves an implied directory's and a symlink's
    # mtime at the time it made them), but a directory's link count: not all its
    # subdirectories are listed
    source = snapshot(src, atime=False)
    expected = {rel: dataclasses.replace(source[rel], nlink=made[rel].nlink)
                if source[rel].kind == "dir" else source[rel] for rel in made}
    assert tree_diffs(expected, made, ignore_root_times=True) == []
    assert not (tmp_path / "dst/f/h/i").exists()  # made, not walked
    assert os.path.islink(tmp_path / "dst/lnk")
    again = fsclone_json("pass", "copy", "--files-from", listing, src, tmp_path / "dst",
                         state=state)[1]
    assert {k for k, n in again["counters"].items() if n} == {C.SCANNED, C.SAME, C.ERRORS, C.CHUNKS}


@pytest.mark.parametrize("entry", ["../x", "a/../../x", "/etc/passwd", "lnk/y", "a/./b/y",
                                   "top/"])
def test_a_path_the_source_does_not_hold_refuses_the_pass_before_anything_is_written(
        tmp_path: Path, entry: str) -> None:
    src, dst, state = tmp_path / "src", tmp_path / "dst", tmp_path / "state"
    _tree(src)
    listing = _list(tmp_path / "list", src, ["top", entry], "\n")
    proc = fsclone("pass", "copy", "--files-from", listing, src, dst, state=state)
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.decode().splitlines()
    assert line.startswith("fsclone: --files-from: "), line
    assert not dst.exists()
    assert pass_ids(state) == []


def test_sync_and_delete_take_no_list(tmp_path: Path) -> None:
    """Deletions are planned from complete listings: a list of paths says nothing of what the
    rest of the target should hold, so only a copy takes one."""
    listing = tmp_path / "list"
    listing.write_text("x\n")
    for op in ("sync", "delete"):
        proc = fsclone("pass", op, "--files-from", listing, tmp_path, tmp_path / "dst",
                       state=tmp_path / "state")
        assert proc.returncode == 2 and b"No such option '--files-from'" in proc.stderr


def test_a_resume_is_asked_with_the_same_list(tmp_path: Path) -> None:
    """The list is part of the request, by its content: the same path holding other lines is
    another request."""
    src, dst, state = many_files(tmp_path / "src", dirs=4, files=10), tmp_path / "dst", \
        tmp_path / "state"
    listing = tmp_path / "list"
    listing.write_text("".join(f"d{d:03}/f{f:03}\n" for d in range(4) for f in range(10)))
    with held(src / "d003/f009") as lease:
        pass_id = _interrupt(["copy", "--files-from", listing, src, dst], lease, state)
    kept = listing.read_text()
    listing.write_text(kept + "d000/f000\n")  # the same paths and one more
    other = _once_unlocked("pass", "copy", "--files-from", listing, src, dst, state=state)
    assert other.returncode == 2
    (line,) = other.stderr.decode().splitlines()
    assert pass_id in line and "--files-from" in line, line
    assert f"fsclone pass copy --files-from {listing} {src} {dst}" in line, line
    listing.write_text(kept)
    same = fsclone("pass", "copy", "--files-from", listing, src, dst, state=state)
    assert same.returncode == 0, same.stderr
    assert b"resuming pass " + pass_id.encode() in same.stderr
    assert_same_tree(src, dst, ignore_root_times=True)
