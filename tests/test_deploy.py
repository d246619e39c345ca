"""deploy/: the worker unit as systemd sees it after the documented install, and one site user
named alike in every file an admin copies."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from fsclone.config import read_site_file
from tests.services import require, skip_or_fail

REPO = Path(__file__).parent.parent
DEPLOY = REPO / "deploy"
UNIT = "etc/systemd/system/fsclone-worker.service"


def unit_settings(path: Path) -> dict[str, str]:
    """KEY=value lines of a unit or env file (the last wins, as in systemd)."""
    pairs = (line.split("=", 1) for line in path.read_text().splitlines()
             if "=" in line and not line.startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


@pytest.mark.service
def test_worker_unit_verifies_after_the_documented_install(tmp_path: Path) -> None:
    """deploy/systemd/install.sh into a temporary root (DESTDIR), then ``systemd-analyze verify``
    there: the fsclone it runs, its env file and its Documentation= all exist. The install
    fetches the build tools from PyPI (as .ci/run's does); fsclone's dependencies are left out,
    the unit needs only its executable."""
    analyze = require("systemd-analyze")
    checkout, root = tmp_path / "checkout", tmp_path / "root"
    for part in ("fsclone", "deploy"):
        shutil.copytree(REPO / part, checkout / part,
                        ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, checkout / name)
    env = os.environ | {"DESTDIR": str(root), "PIP_NO_DEPS": "1",
                        "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    install = subprocess.run([checkout / "deploy" / "systemd" / "install.sh"], env=env,
                             capture_output=True, text=True, timeout=600)
    if install.returncode != 0 and "NewConnectionError" in install.stderr:
        skip_or_fail(f"PyPI is unreachable: {install.stderr.splitlines()[-1]}")
    assert install.returncode == 0, install.stderr
    # the rest of a system: the targets the unit orders itself after
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    verify = subprocess.run([analyze, "verify", f"--root={root}", f"/{UNIT}"],
                            capture_output=True, text=True, timeout=120)
    assert verify.returncode == 0 and not verify.stdout + verify.stderr, verify.stderr
    unit = unit_settings(root / UNIT)
    assert unit["Documentation"].startswith("file:///")
    assert (root / unit["Documentation"].removeprefix("file:///")).is_file()
    assert (root / unit["EnvironmentFile"].lstrip("/")).is_file()
    # the watcher's unit, for the mirror NAME its example env file (copied as an admin does)
    # describes
    shutil.copy(root / "etc/fsclone/watch.env.example", root / "etc/fsclone/watch-project.env")
    watch = subprocess.run([analyze, "verify", f"--root={root}",
                            "/etc/systemd/system/fsclone-watch@project.service"],
                           capture_output=True, text=True, timeout=120)
    assert watch.returncode == 0 and not watch.stdout + watch.stderr, watch.stderr
    env = unit_settings(root / "etc/fsclone/watch-project.env")
    assert env["FSCLONE_WATCH_SRC"] and env["FSCLONE_WATCH_DST"]


def test_one_site_user_across_readme_config_env_and_definitions() -> None:
    """The user (and vhost) of deploy/README.md's init.sh line, config.py.example's USERNAME,
    the worker's env file and definitions.json are one name."""
    user = read_site_file(str(REPO / "config.py.example"))["username"]
    readme = re.search(r"deploy/rabbitmq/init\.sh (\S+)", (DEPLOY / "README.md").read_text())
    assert readme and readme[1] == user
    env = unit_settings(DEPLOY / "systemd" / "fsclone-worker.env")
    broker = urlsplit(env["FSCLONE_BROKER"])
    assert (broker.username, broker.path, broker.port) == (user, f"/{user}", 5672)
    assert Path(env["FSCLONE_PASSWORD_FILE"]).name == f"rabbitmq_{user}.conf"
    definitions = json.loads((DEPLOY / "rabbitmq" / "definitions.json").read_text())
    assert [u["name"] for u in definitions["users"]] == [user]
    assert [v["name"] for v in definitions["vhosts"]] == [user]
    assert {(p["user"], p["vhost"]) for p in definitions["permissions"]} == {(user, user)}
    assert {e["vhost"] for e in definitions["exchanges"]} == {user}


def readme_blocks() -> list[list[str]]:
    """The README's indented command blocks, in order (as .ci/fresh-debian reads them)."""
    blocks: list[list[str]] = []
    inside = False
    for line in (REPO / "README.md").read_text().splitlines():
        if line.startswith("    "):
            if not inside:
                blocks.append([])
            blocks[-1].append(line[4:])
        inside = line.startswith("    ")
    return blocks


def test_ci_runs_the_readme_test_command() -> None:
    """.ci/run installs the test tools the README's second command names and runs its test
    part verbatim; the first command installs into the venv the second one enters."""
    install, tests = readme_blocks()[:2]
    assert install[-1].startswith("python3 -m venv .venv && . .venv/bin/activate && ")
    [command] = tests
    enter, pip, pytest_part = command.split(" && ")
    assert enter == ". .venv/bin/activate"
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert f"{pytest_part} || status=$?" in ci
    assert pip.startswith("python3 -m pip install ")
    [extras] = re.findall(r"'\.\[[a-z,]+\]'", pip)
    assert any(line.startswith("python3 -m pip install ") and extras in line for line in ci)
