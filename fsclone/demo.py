"""``python3 -m fsclone.demo DIR``: make DIR/src, a small tree with every kind of entry fsclone
keeps (holes, hard links, symlinks, a fifo, xattrs, odd names, old times), for a first run."""

from __future__ import annotations

import contextlib
import os
import sys


def build(root: str) -> str:
    src = os.path.join(root, "src")
    os.makedirs(os.path.join(src, "project", "data"), exist_ok=False)
    data = os.path.join(src, "project", "data")
    for i in range(200):
        with open(os.path.join(data, f"sample-{i:03}.dat"), "wb") as f:
            f.write(os.urandom(i * 37))
    with open(os.path.join(src, "project", "sparse.img"), "wb") as f:
        f.truncate(64 << 20)  # 64 MiB, almost all hole
        f.write(b"header")
    os.link(os.path.join(data, "sample-001.dat"), os.path.join(src, "project", "hardlink.dat"))
    os.symlink("data/sample-002.dat", os.path.join(src, "project", "latest"))
    os.mkfifo(os.path.join(src, "project", "pipe"))
    odd = os.path.join(os.fsencode(src), b"odd names \xff\n")
    os.mkdir(odd)
    open(os.path.join(odd, b"-rf *"), "w").close()
    with contextlib.suppress(OSError):  # a filesystem without user xattrs
        os.setxattr(os.path.join(src, "project"), "user.owner-group", b"astro")
    os.chmod(os.path.join(src, "project", "data"), 0o750)
    for dirpath, _, names in os.walk(src, topdown=False):
        for name in [*names, ""]:
            os.utime(os.path.join(dirpath, name), (1_600_000_000, 1_500_000_000),
                     follow_symlinks=False)
    return src


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: python3 -m fsclone.demo DIR")
    src = build(sys.argv[1])
    print(f"demo tree in {src}; now try: fsclone pass copy {src} {sys.argv[1]}/dst")


if __name__ == "__main__":
    main()
