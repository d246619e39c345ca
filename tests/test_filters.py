"""The filter flags select what rsync selects: for each set of rules, over one tree whose names
exercise them, ``rsync -a -n`` and a real ``fsclone pass copy`` pick the same entries; and
``sync`` and ``delete`` keep in the target what ``rsync --delete`` keeps.

Each set is a list of (flag, value); for ``--exclude-from`` and ``--include-from`` the value
is the file's text, written to a file whose path both tools are given.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.clirun import fsclone, fsclone_env

Rules = tuple[tuple[str, str], ...]

#: the tree: files (with their text) and, ending in '/', empty directories; '->' a symlink
TREE = (
    "a/x.dat", "a/y.txt", "a/b/y.dat", "a/b/z.txt", "a/b/c/z.txt", "a/b/c/w.dat",
    "keep", "sub/keep/f", "d/sub/keep", "sub/keep2",
    "x", "d/x/in", "x2/dir/c", "dir/a", "dir/sub/b", "y/dir",
    "top.dat", "top.txt", "TOP.DAT", "file1", "file2", "fileA", "fileb",
    "é.dat", "ab.dat", "f[x]", "fx", "a[", "]x", "-x", "space name", " lead", "trail ",
    "deep/1/2/3/z.txt", "deep/1/x.dat", "emptydir/", "d/emptydir/",
    "link->a", "flink->top.dat", "d/dlink->../a",
)

#: the patterns tried alone, as an --exclude each
ALONE = (
    "a/*.dat", "keep/", "/x",  # the issue's
    "x", "x/", "sub/keep", "/sub/keep", "a/b", "*/", "/*/*/", "a*", "*x*", "link/", " lead",
    "trail ", "**/y.dat", "a/**", "a/**/z.txt", "**.txt", "de**", "dir/***", "?.dat", "??.dat",
    "file[0-9]", "file[!0-9]", "file[^[:digit:]]", "[[:upper:]]*", "[]-]x", "f[x]",
    "f\\[x\\]", "a[", "[é]*", "*.DAT", "- *.dat", "+ keep", "space name",
)

SETS: tuple[Rules, ...] = (
    *((("--exclude", pattern),) for pattern in ALONE),
    # the issue's
    (("--include", "*/"), ("--include", "*.dat"), ("--exclude", "*")),
    (("--include", "*.dat"), ("--exclude", "*")),
    # order, prefixes, '!'
    (("--include", "a/b/***"), ("--include", "a/"), ("--exclude", "*")),
    (("--include", "keep"), ("--exclude", "keep")),
    (("--exclude", "keep"), ("--include", "keep")),
    (("--include", "*/"), ("--exclude", "*.dat")),
    (("--exclude", "+ keep"), ("--exclude", "k*")),
    (("--include", "- *.dat"), ("--include", "space name")),
    (("--exclude", "*.dat"), ("--exclude", "!"), ("--exclude", "*.txt")),
    (("--filter", "- *.txt"), ("--filter", "+ a/"), ("--filter", "- /*")),
    # rules from files, in place among the others
    (("--exclude-from", "# a comment\n; another\n\n*.dat\nkeep/\n"),),
    (("--include-from", "*/\n# dirs and text only\n*.txt\n"), ("--exclude", "*")),
    (("--include", "top.dat"), ("--exclude-from", "*.dat\r\n+ *.txt\n"),
     ("--include-from", "x\n"), ("--exclude", "x*")),
)


def _build(root: Path) -> None:
    for entry in TREE:
        name, _, target = entry.partition("->")
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if target:
            path.symlink_to(target)
        elif name.endswith("/"):
            path.mkdir(exist_ok=True)
        else:
            path.write_text(name)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("filters") / "src"
    _build(root)
    return root


def _args(rules: Rules, where: Path) -> list[str]:
    """The rules as arguments, each -from file's text written to a file of its own."""
    args: list[str] = []
    for n, (flag, value) in enumerate(rules):
        if flag.endswith("-from"):
            path = where / f"rules{n}"
            path.write_text(value)
            value = str(path)
        args += [flag, value]
    return args


def _rsync_selects(src: Path, args: list[str]) -> set[str]:
    listing = subprocess.run(
        ["rsync", "-a", "-n", "--out-format=%n", *args, f"{src}/", "/nonexistent-target/"],
        capture_output=True, check=True).stdout
    return {os.fsdecode(line).rstrip("/") for line in listing.splitlines()} - {"."}


def _below(root: Path) -> set[str]:
    found = set()
    for top, dirs, files in os.walk(root):
        for name in dirs + files:
            found.add(os.path.relpath(os.path.join(top, name), root))
    return found


def _name(rules: Rules) -> str:
    return " ".join(f"{flag} {value!r}" for flag, value in rules)


@pytest.mark.parametrize("rules", SETS, ids=_name)
def test_copy_selects_what_rsync_selects(rules: Rules, source: Path, tmp_path: Path) -> None:
    args = _args(rules, tmp_path)
    expected = _rsync_selects(source, args)
    dst = tmp_path / "dst"
    proc = fsclone("pass", "copy", "-w", "1", *args, source, dst, state=tmp_path / "state")
    assert proc.returncode == 0, proc.stderr
    got = _below(dst)
    assert (sorted(got - expected), sorted(expected - got)) == ([], []), "(extra, missing)"


#: the target's own entries, absent from the source: rsync --delete removes those its rules
#: do not exclude (and keeps a directory that holds an excluded entry)
TARGET_ONLY = ("old.dat", "old.txt", "gone/keep", "gone/junk", "gone/sub/w.dat", "gone/e/",
               "a/b/old.dat", "sub/keep/old", "sub/keep3/")

DELETE_SETS: tuple[Rules, ...] = (
    (("--exclude", "*.dat"),),
    (("--exclude", "keep/"),),
    (("--exclude", "keep"),),
    (("--include", "*/"), ("--include", "*.dat"), ("--exclude", "*")),
    (("--exclude", "a/*.dat"),),
    (("--exclude", "/gone/"),),
    (("--exclude-from", "# protected\n**/w.dat\n"),),
    (("--include", "gone/junk"), ("--exclude", "gone/*")),
)


@pytest.mark.parametrize("op", ["sync", "delete"])
@pytest.mark.parametrize("rules", DELETE_SETS, ids=_name)
def test_deletes_keep_what_rsync_keeps(rules: Rules, op: str, source: Path,
                                       tmp_path: Path) -> None:
    """A target that holds all of the source and entries of its own: each tool removes those
    of its own that the rules do not exclude."""
    args = _args(rules, tmp_path)
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    for target in (ours, theirs):
        subprocess.run(["rsync", "-a", f"{source}/", f"{target}/"], check=True)
        for name in TARGET_ONLY:
            path = target / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.mkdir() if name.endswith("/") else path.write_text("target only")
    subprocess.run(["rsync", "-a", "--delete", *args, f"{source}/", f"{theirs}/"],
                   capture_output=True, check=False)
    proc = fsclone("pass", op, "-w", "1", *args, source, ours, state=tmp_path / "state")
    assert proc.returncode == 0, proc.stderr
    got, expected = _below(ours), _below(theirs)
    assert (sorted(got - expected), sorted(expected - got)) == ([], []), "(extra, missing)"


def test_a_rules_file_can_be_standard_input(source: Path, tmp_path: Path) -> None:
    """``--exclude-from -`` reads the patterns from standard input, as rsync does."""
    dst = tmp_path / "dst"
    proc = subprocess.run([sys.executable, "-m", "fsclone", "pass", "copy", "-w", "1",
                           "--exclude-from", "-", str(source), str(dst)],
                          input=b"# from stdin\n*.dat\n", env=fsclone_env(tmp_path / "state"),
                          capture_output=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert _below(dst) == _rsync_selects(source, ["--exclude", "*.dat"])
