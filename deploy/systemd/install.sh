#!/bin/bash
# Install fsclone, its worker unit and its watcher unit on a node, from this checkout (as root):
#
#   apt-get install -y python3-venv && deploy/systemd/install.sh
#
# fsclone goes into a venv at /opt/fsclone (Debian's python3 is externally managed, PEP 668):
# /opt/fsclone/bin/fsclone is what the units run. The units go to /etc/systemd/system, the
# worker's env file to /etc/fsclone/worker.env unless one is there (edit it), the watcher's
# example to /etc/fsclone/watch.env.example (copy it to watch-NAME.env for
# fsclone-watch@NAME), and deploy/README.md to where the units' Documentation= points. Run
# again to upgrade; the env files are kept.
# DESTDIR=DIR installs below DIR instead of / (an image, a package, a test).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$(dirname "$here")")
root=${DESTDIR:-}
venv=$root/opt/fsclone

python3 -m venv "$venv"
"$venv/bin/pip" install -q "$repo"
install -D -m 644 "$repo/deploy/README.md" "$venv/share/doc/fsclone/README.md"
install -D -m 644 "$here/fsclone-worker.service" "$root/etc/systemd/system/fsclone-worker.service"
install -D -m 644 "$here/fsclone-watch@.service" "$root/etc/systemd/system/fsclone-watch@.service"
install -D -m 644 "$here/fsclone-watch.env" "$root/etc/fsclone/watch.env.example"
if [[ ! -e $root/etc/fsclone/worker.env ]]; then
    install -D -m 644 "$here/fsclone-worker.env" "$root/etc/fsclone/worker.env"
fi
echo "$0: fsclone in $venv/bin, the unit in $root/etc/systemd/system; now edit" \
    "$root/etc/fsclone/worker.env, then: systemctl daemon-reload; systemctl enable --now fsclone-worker"
