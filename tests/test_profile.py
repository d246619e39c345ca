"""The filesystem profile of a pass's two sides: what real filesystems made by the tests hold,
found once by the coordinator without a trace in the target, overridden by the site's
PROFILE, shown in the summary, --json and status, and kept by a resume."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from fsclone.config import Config
from fsclone.engine.coordinator import Hooks
from fsclone.engine.launch import PassRequest, run_pass
from fsclone.fs import profile
from fsclone.fsprofile import FsProfile, Profiles, parse_overrides
from fsclone.state.directory import pass_ids
from fsclone.state.queries import read_record
from fsclone.transport.memory import CoordinatorKilled, MemoryTransport
from tests.clirun import fsclone, fsclone_json
from tests.faultmount import faulty
from tests.mounts import loop_fs, tmpfs

SECOND = 10**9
#: (kind, mkfs arguments, image size in MB) of the loop-mounted filesystems
_LOOPS = {"xfs": ("xfs", (), 300), "ext4-128": ("ext4", ("-I", "128"), 64),
          "btrfs": ("btrfs", (), 128)}


def _probed(root: Path) -> FsProfile:
    """The target profile of ``root``, checking that the probe left no trace in it: no
    entry, and its times as they were."""
    entries = sorted(os.listdir(root))  # first: a listing moves the atime
    before = os.stat(root)
    found = profile.probe(str(root), "20260101-000000-copy-abcdef", writes=True)
    after = os.stat(root)
    assert sorted(os.listdir(root)) == entries
    assert (after.st_mtime_ns, after.st_atime_ns) == (before.st_mtime_ns, before.st_atime_ns)
    return found


@pytest.mark.parametrize("name", ["tmpfs", *_LOOPS])
def test_a_profile_says_what_each_filesystem_holds(tmp_path: Path, name: str) -> None:
    """XFS holds project IDs, tmpfs and btrfs none; ext4 with 128-byte inodes keeps whole
    seconds up to 2038; all of them make unnamed files and copy in the kernel."""
    if name == "tmpfs":
        mount = tmpfs(tmp_path / "mnt", "4m")
    else:
        kind, args, size = _LOOPS[name]
        mount = loop_fs(tmp_path / "mnt", kind, size_mb=size, mkfs_args=args)
    with mount as mnt:
        (mnt / "kept").write_text("a user's")
        found = _probed(mnt)
    assert found.kind == name.split("-")[0]
    assert found.project_ids == (name == "xfs")
    assert found.time_step_ns == (SECOND if name == "ext4-128" else 1)
    if name == "ext4-128":
        assert found.time_high_ns == (2**31 - 1) * SECOND
    assert found.tmpfile and found.copy_file_range and found.flags
    assert found.latency_us >= 1
    assert "trusted.lov" in found.skipped_xattrs and not found.flush_before_times


def test_a_fuse_target_without_unnamed_files_is_probed_in_a_private_directory(
        tmp_path: Path) -> None:
    """faultfs (FUSE) has no O_TMPFILE: the probe makes a temp directory of its own, removes it
    and puts the root's times back; a pass then takes the temp-name path."""
    with faulty(tmp_path, "fuse") as (mnt, _):
        found = _probed(mnt)
        assert (found.kind, found.tmpfile, found.time_step_ns) == ("fuse", False, 1)
        assert not found.project_ids
        src = tmp_path / "src"
        src.mkdir()
        (src / "f").write_text("over FUSE")
        rc, out = fsclone_json("pass", "copy", src, mnt / "dst", state=tmp_path / "state")
        assert rc == 0, out
        assert out["profile"]["dst"]["kind"] == "fuse"
        assert out["profile"]["dst"]["tmpfile"] is False
        assert (mnt / "dst" / "f").read_text() == "over FUSE"


def test_the_source_is_never_written_to(tmp_path: Path) -> None:
    """A source's profile is what statfs and its root show: nothing probed by writing."""
    with tmpfs(tmp_path / "src", "1m") as src:
        os.chmod(src, 0o555)
        found = profile.probe(str(src), "20260101-000000-copy-abcdef", writes=False)
    assert (found.kind, found.tmpfile, found.time_step_ns, found.copy_file_range) == \
        ("tmpfs", None, None, None)
    assert found.flags and not found.project_ids


def _whole_second_tree(src: Path) -> None:
    src.mkdir()
    for name in ("a", "b"):
        (src / name).write_text(name)
        os.utime(src / name, ns=(1_600_000_000 * SECOND, 1_600_000_000 * SECOND))


@pytest.mark.parametrize("override", [True, False])
def test_a_whole_second_step_set_for_the_target_makes_sub_second_changes_no_change(
        tmp_path: Path, override: bool) -> None:
    """PROFILE's time_step_ns for a target that keeps ns (tmpfs) is taken at its word: a
    source mtime moved within its second compares equal to the copy's whole second, so the
    second pass copies nothing; without the setting, it copies both files again."""
    src, dst, state = tmp_path / "src", tmp_path / "dst", tmp_path / "state"
    _whole_second_tree(src)
    settings = {"profile": json.dumps({"dst": {"time_step_ns": SECOND}})} if override else {}
    rc, out = fsclone_json("pass", "copy", src, dst, state=state, **settings)
    assert rc == 0 and out["counters"]["files_copied"] == 2, out
    assert out["profile"]["dst"]["time_step_ns"] == (SECOND if override else 1)
    for name in ("a", "b"):
        os.utime(src / name, ns=(1_600_000_000 * SECOND + 500_000_000,) * 2)
    rc, out = fsclone_json("pass", "copy", src, dst, state=state, **settings)
    assert rc == 0, out
    assert out["counters"].get("files_copied", 0) == (0 if override else 2)


@pytest.mark.parametrize(("setting", "named"), [
    ({"dst": {"tmpfil": False}}, "'tmpfil'"),
    ({"dst": {"time_step_ns": 0}}, "'time_step_ns'"),
    ({"dst": {"tmpfile": "no"}}, "'tmpfile'"),
    ({"src": {"tmpfile": False}}, "'tmpfile'"),
    ({"target": {}}, "'target'"),
    ("not json", "PROFILE"),
])
def test_a_bad_profile_setting_is_refused_with_one_line_and_nothing_written(
        tmp_path: Path, setting: Any, named: str) -> None:
    src, dst, state = tmp_path / "src", tmp_path / "dst", tmp_path / "state"
    src.mkdir()
    (src / "f").write_text("x")
    value = setting if isinstance(setting, str) else json.dumps(setting)
    proc = fsclone("pass", "copy", src, dst, state=state, profile=value)
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert len(err.strip().splitlines()) == 1 and named in err and "PROFILE" in err, err
    assert not dst.exists() and (not state.exists() or not pass_ids(state))


def test_the_site_file_takes_a_dict_and_refuses_a_bad_one(tmp_path: Path) -> None:
    site = tmp_path / "config.py"
    site.write_text('PROFILE = {"dst": {"time_step_ns": 1_000_000_000, "tmpfile": False},\n'
                    '           "src": {"project_ids": False}}\n')
    src = tmp_path / "src"
    _whole_second_tree(src)
    rc, out = fsclone_json("pass", "copy", "--config", site, src, tmp_path / "dst",
                           state=tmp_path / "state")
    assert rc == 0, out
    dst = out["profile"]["dst"]
    assert (dst["time_step_ns"], dst["tmpfile"], out["profile"]["src"]["project_ids"]) == \
        (SECOND, False, False)
    assert dst["overridden"] == ["time_step_ns", "tmpfile"]
    assert parse_overrides({"dst": {"time_high_ns": None}}) == {"dst": {"time_high_ns": None}}
    with pytest.raises(ValueError, match=r"'flags'.*True or False"):
        parse_overrides({"src": {"flags": 1}})


def test_the_summary_and_status_show_the_profile(tmp_path: Path) -> None:
    """One line a side in the summary and in status (text and JSON)."""
    src, state = tmp_path / "src", tmp_path / "state"
    src.mkdir()
    (src / "f").write_text("x")
    with tmpfs(tmp_path / "dst", "1m") as dst:
        proc = fsclone("pass", "copy", src, dst, state=state)
        assert proc.returncode == 0, proc.stderr
        shown = proc.stdout.decode()
        assert "  target: tmpfs, times 1ns, O_TMPFILE, copy_file_range, no project IDs, flags" \
            in shown, shown
        assert "  source: " in shown
        (pass_id,) = pass_ids(state)
        status = fsclone("status", pass_id, state=state).stdout.decode()
        assert "    target: tmpfs, times 1ns, O_TMPFILE" in status, status
        listed = json.loads(fsclone("status", pass_id, "--json", state=state).stdout)
        assert listed["profile"]["dst"]["kind"] == "tmpfs"
        assert listed["profile"]["src"]["tmpfile"] is None  # the source is never probed


def _interrupted(tmp_path: Path, cfg: Config, req: PassRequest) -> Profiles:
    """Start a pass and stop its coordinator at its first poll: the profile it recorded."""
    with pytest.raises(CoordinatorKilled):
        run_pass(cfg, req, Hooks(), MemoryTransport(interrupt=lambda queued: True))
    (pass_id,) = pass_ids(tmp_path / "state")
    return read_record(tmp_path / "state" / pass_id).spec.profile


def _request(tmp_path: Path) -> tuple[Config, PassRequest]:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    (src / "f").write_text("x")
    cfg = Config(workers=1, state_dir=str(tmp_path / "state"))
    return cfg, PassRequest(op="copy", src=str(src), dst=str(dst))


def test_a_resume_keeps_the_recorded_profile(tmp_path: Path) -> None:
    """A resume runs with the profile its pass started with, PROFILE changed since or not,
    and says so when it did."""
    cfg, req = _request(tmp_path)
    recorded = _interrupted(tmp_path, cfg, req)
    assert recorded.dst.time_step_ns == 1
    notes: list[str] = []
    changed = Config(workers=1, state_dir=cfg.state_dir,
                     profile_overrides={"dst": {"time_step_ns": SECOND}})
    spec, summary = run_pass(changed, req, Hooks(note=notes.append), MemoryTransport())
    assert summary.status == "done" and spec.profile == recorded
    assert any("keeps the filesystem profile it started with" in n for n in notes), notes
    (pass_id,) = pass_ids(tmp_path / "state")
    assert read_record(tmp_path / "state" / pass_id).spec.profile == recorded


def test_a_resume_onto_another_kind_of_filesystem_finds_the_profile_again(
        tmp_path: Path) -> None:
    cfg, req = _request(tmp_path)
    recorded = _interrupted(tmp_path, cfg, req)
    assert recorded.dst.kind != "tmpfs"
    notes: list[str] = []
    with tmpfs(tmp_path / "dst", "1m"):
        spec, summary = run_pass(cfg, req, Hooks(note=notes.append), MemoryTransport())
        assert summary.status == "done" and spec.profile.dst.kind == "tmpfs"
        assert any("found again" in n for n in notes), notes
        (pass_id,) = pass_ids(tmp_path / "state")
        assert read_record(tmp_path / "state" / pass_id).spec.profile.dst.kind == "tmpfs"
