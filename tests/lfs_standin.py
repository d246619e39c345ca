"""A stand-in for Lustre's ``lfs``, since no Lustre runs here: the commands the changelog feed
runs, answered from files in a directory (its first argument), the way lfs answers.

- ``changelog MDT [STARTREC]``: the records of ``DIR/MDT.log`` (the test's, each ending in a
  NUL) from STARTREC on, a line each, leaving out those every user cleared (the MDT purges them);
- ``changelog_clear MDT USER ENDREC``: moves USER's cleared record in ``DIR/users.json``
  (``{MDT: {USER: cleared}}``), refuses as lfs does (``no changelog user``, ``record out of
  range``), and appends every call to ``DIR/clears.log``;
- ``fid2path --print-fid MOUNT FID...``: ``DIR/fids.json`` maps a FID to its paths in the
  filesystem (below the mount point; ``""`` is its root), printed as ``FID MOUNT/PATH``.

A gap or a deregistered user is the test's to make: drop lines from the log, or a user from
users.json. Run as ``python3 lfs_standin.py DIR COMMAND ARGS...``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def _index(line: bytes) -> int:
    return int(line.split(b" ", 1)[0])


def _records(where: Path, mdt: str) -> list[bytes]:
    """The log's records: each ends in a NUL, which no name holds (a newline may)."""
    return (where / f"{mdt}.log").read_bytes().split(b"\0")[:-1]


def _users(where: Path) -> dict[str, dict[str, int]]:
    return dict(json.loads((where / "users.json").read_text()))


def changelog(where: Path, mdt: str, start: int = 0) -> int:
    users = _users(where).get(mdt, {})
    purged = min(users.values()) if users else 0
    for record in _records(where, mdt):
        if _index(record) >= start and _index(record) > purged:
            sys.stdout.buffer.write(record + b"\n")
    return 0


def changelog_clear(where: Path, mdt: str, user: str, end: int) -> int:
    with open(where / "clears.log", "a") as log:
        log.write(f"{mdt} {user} {end}\n")
    users = _users(where)
    if user not in users.get(mdt, {}):
        print(f"lfs changelog_clear: no changelog user: {user}", file=sys.stderr)
        return 2
    last = max((_index(r) for r in _records(where, mdt)), default=0)
    if end > last or end < users[mdt][user]:
        print(f"lfs changelog_clear: record out of range: {end}", file=sys.stderr)
        return 22
    users[mdt][user] = last if end == 0 else end
    (where / "users.json").write_text(json.dumps(users))
    return 0


def fid2path(where: Path, mount: str, fids: list[str]) -> int:
    table = json.loads((where / "fids.json").read_text())
    rc = 0
    for fid in fids:
        paths = table.get(fid.strip("[]"))
        if fid.strip("[]") == "0x0:0x0:0x0":
            print(f"lfs fid2path: cannot find {mount} {fid}: Invalid argument", file=sys.stderr)
            rc = rc or 22
            continue
        if not paths:
            print(f"lfs fid2path: cannot find {mount} {fid}: No such file or directory",
                  file=sys.stderr)
            rc = rc or 2
            continue
        for path in paths:
            sys.stdout.buffer.write(f"{fid} {mount}/".encode() + os.fsencode(path) + b"\n")
    return rc


def main(argv: list[str]) -> int:
    where, command, args = Path(argv[0]), argv[1], argv[2:]
    if command == "changelog":
        return changelog(where, args[0], int(args[1]) if len(args) > 1 else 0)
    if command == "changelog_clear":
        return changelog_clear(where, args[0], args[1], int(args[2]))
    if command == "fid2path" and args[0] == "--print-fid":
        return fid2path(where, args[1], args[2:])
    print(f"lfs: {command}: not in the stand-in", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
