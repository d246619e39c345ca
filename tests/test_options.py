"""Each option is declared once (fsclone.options) and everything else derives from that
declaration. These tests walk the declarations, so an option added there is checked in every
derived place at once: its flag on each command that takes it, its setting in config.py and
the environment, the Config, the spec a worker sees, and the resume check."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import click
import pytest

from fsclone.cli import given
from fsclone.cli.passes import pass_group
from fsclone.config import SETTINGS, load, read_site_file
from fsclone.engine.launch import build_spec
from fsclone.fsprofile import FsProfile, Profiles
from fsclone.options import OPTIONS, PASS_OPTIONS, PASSES, RUNS, SHAPING, Option
from fsclone.spec import PassSpec, as_flags, differences
from tests.clirun import fsclone

#: a value other than the default for each option whose flag takes one (on/off flags need
#: none): a new option of that kind needs a line here
SAMPLES = {
    "modify_window_ns": "2", "oldest": "90d", "newest": "1d", "filter_rules": "- *.o",
    "excludes": "*.tmp", "includes": "keep.tmp", "exclude_from": "/dev/null",
    "include_from": "/dev/null", "max_delete": "10", "sentinel": ".mounted", "sample": "0.5",
    "seed": "7", "manifest": "/var/tmp/manifest.tsv", "retry_of": "20260101-000000-copy-abcdef",
    "workers": "3", "transport": "mpi", "broker": "amqp://alice@mq/hpc", "state_dir": "/var/st",
    "depth": "24", "memcached": "mc1:11211", "graphite": "[fd00::2]:2003",
    "progress": "5", "log_file": "/var/log/fsclone.log",
    "files_from": "/var/tmp/paths.txt", "bwlimit": "100M", "max_rate": "10k",
    "layout": "target-default", "released": "copy",
}
#: the arguments and options of the pass commands that are no option of a pass: the roots,
#: which pass to resume, and how the CLI prints
CLI_ONLY = {"src", "dst", "pass_id", "config_file", "as_json", "quiet"}


def _command(name: str) -> click.Command:
    return pass_group.commands[name]


def _takes_value(o: Option) -> bool:
    return not isinstance(o.default, bool) or o.flag_type is not None


def _all_flags(command: str) -> list[str]:
    """Every declared flag of ``fsclone pass COMMAND``, each with a value other than the
    default."""
    args: list[str] = []
    for o in OPTIONS.values():
        if command in o.commands:
            args += [o.flag, SAMPLES[o.name]] if _takes_value(o) else [o.flag]
    return args


def _parsed(command: str, args: list[str]) -> dict[str, Any]:
    """The command's arguments as click parses them (the command is not run)."""
    return _command(command).make_context(command, [*args, "/s", "/d"]).params


def _wire(spec: PassSpec) -> PassSpec:
    """The spec as a worker gets it: through JSON."""
    return PassSpec.from_wire(json.loads(json.dumps(spec.to_wire())))


def test_the_declarations_are_complete() -> None:
    """A flag belongs to some command; an option that shapes the result is carried in the
    spec and has a flag to name it by; setting and environment names are unique."""
    for o in OPTIONS.values():
        assert bool(o.flag) == bool(o.commands), o.name
        assert set(o.commands) <= set(RUNS), o.name
        if o.shapes:
            assert o.name in PASS_OPTIONS and o.flag, o.name
        if _takes_value(o) and o.flag:
            assert o.name in SAMPLES, f"add a sample value of {o.flag} to SAMPLES"
    assert [o.name for o in SHAPING] == [n for n, o in PASS_OPTIONS.items() if o.shapes]
    settings = [o.setting.upper() for o in OPTIONS.values() if o.setting]
    assert len(settings) == len(set(settings)) == len(SETTINGS)
    flags = [o.flag for o in OPTIONS.values() if o.flag]
    assert len(flags) == len(set(flags))


@pytest.mark.parametrize("command", RUNS)
def test_every_flag_is_on_the_commands_that_take_it(command: str) -> None:
    params = {p.name: p for p in _command(command).params}
    declared = {name for name, o in OPTIONS.items() if command in o.commands}
    assert declared <= set(params) and set(params) - declared <= CLI_ONLY
    for name in declared:
        o, param = OPTIONS[name], params[name]
        assert isinstance(param, click.Option)
        assert param.opts == [o.flag, o.short] if o.short else [o.flag], name
        assert (param.help, param.metavar, param.multiple) == (
            o.help, o.metavar, isinstance(o.default, tuple)), name


@pytest.mark.parametrize("command", PASSES)
def test_every_flag_reaches_the_spec_a_worker_sees_and_the_resume_check(command: str) -> None:
    """Each flag, given with a value other than its default, is in the Config; a pass option
    is in the spec as a worker reads it; one that shapes the result makes a resume with its
    default refused, naming the flag; and the command a refusal prints asks for the same."""
    cfg = load(None, {}, given(_parsed(command, _all_flags(command))))
    seen = _wire(build_spec(cfg, command, "/s", "/d"))
    for name, o in OPTIONS.items():
        if command not in o.commands:
            continue
        assert getattr(cfg, name) != o.default, name
        if name in PASS_OPTIONS:
            assert getattr(seen, name) == getattr(cfg, name), name
        if o.shapes:
            assert differences(seen, dataclasses.replace(seen, **{name: o.default})) == [o.flag]
    again = load(None, {}, given(_parsed(command, as_flags(seen))))
    assert differences(seen, build_spec(again, command, "/s", "/d")) == []


def test_every_pass_option_goes_over_the_wire() -> None:
    """Every field of the spec, pass options included, survives the JSON a worker reads."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(PassSpec):
        marker = f"marker of {f.name}"
        values[f.name] = (marker,) if isinstance(f.default, tuple) else marker
    values["profile"] = Profiles(
        src=FsProfile(kind="xfs", latency_us=7, project_ids=True, skipped_xattrs=("a", "b*")),
        dst=FsProfile(kind="lustre", time_step_ns=10**9, time_high_ns=2**31 * 10**9,
                      tmpfile=False, copy_file_range=True, flush_before_times=True,
                      overridden=("tmpfile",)))
    spec = PassSpec(**values)
    assert _wire(spec) == spec
    assert set(PASS_OPTIONS) <= set(spec.to_wire())


def test_a_spec_written_before_still_reads() -> None:
    """A record's spec as older versions wrote it (every key of today's, and one this version
    no longer knows): the same fields, the same meaning. Its globs, an include overriding
    every exclude, are the rules of its includes, then its excludes."""
    old = {"id": "20260101-000000-sync-abcdef", "op": "sync", "src": "/s", "dst": "/d",
           "started": 1.5, "dry_run": False, "checksum": True, "modify_window_ns": 2000000000,
           "oldest": 86400, "newest": None, "excludes": ["a", "b"], "includes": ["c"],
           "large_file_size": 1048576, "range_size": 524288, "dir_slice": 100, "sample": 1.0,
           "seed": 0, "metadata_only": False, "manifest": False, "verbose": True,
           "retry_of": "", "max_delete": 10, "sentinel": ".m", "one_file_system": True,
           "source_mounts": ["", "sub"], "retired_option": 3}
    spec = PassSpec.from_wire(old)
    assert spec == PassSpec(
        id="20260101-000000-sync-abcdef", op="sync", src="/s", dst="/d", started=1.5,
        checksum=True, modify_window_ns=2000000000, oldest=86400,
        filter_rules=("+ c", "- a", "- b"), large_file_size=1048576, range_size=524288,
        dir_slice=100, verbose=True, max_delete=10, sentinel=".m", one_file_system=True,
        source_mounts=("", "sub"))
    assert PassSpec.from_wire({k: old[k] for k in ("id", "op", "src", "dst", "started")}) == \
        PassSpec(id=spec.id, op="sync", src="/s", dst="/d", started=1.5)


def test_every_setting_is_read_from_the_site_file_and_the_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each setting, by its name in config.py and as FSCLONE_<NAME>, through its own parser;
    the environment over the file, a flag over both (a list flag adds to the setting's)."""
    for key, o in SETTINGS.items():
        monkeypatch.setitem(SETTINGS, key, dataclasses.replace(o, parse=lambda v: ("parsed", v)))
    site = tmp_path / "config.py"
    site.write_text("".join(f"{key} = 'file'\n" for key in SETTINGS))
    assert read_site_file(str(site)) == {o.name: ("parsed", "file") for o in SETTINGS.values()}
    half = dict(list(SETTINGS.items())[::2])
    env = {o.env: "env" for o in half.values()}
    cfg = load(str(site), env, {})
    for key, o in SETTINGS.items():
        assert getattr(cfg, o.name) == ("parsed", "env" if key in half else "file"), key
    with_flag = [o for o in SETTINGS.values() if o.flag]
    lists = {o.name for o in with_flag if isinstance(o.default, tuple)}
    cfg = load(str(site), env, {o.name: ("flag",) if o.name in lists else "flag"
                                       for o in with_flag})
    for o in with_flag:
        below = ("parsed", "env" if o.setting in half else "file")
        assert getattr(cfg, o.name) == ((*below, "flag") if o.name in lists else "flag"), o.name


def test_the_example_config_shows_every_setting() -> None:
    example = (Path(__file__).parent.parent / "config.py.example").read_text()
    shown = set(re.findall(r"^#? ?(\w+) =", example, re.MULTILINE))
    assert set(SETTINGS) <= shown, set(SETTINGS) - shown


@pytest.mark.parametrize(("args", "graphite", "named"), [
    (["pass", "copy", "--graphite", "carbon1:x", "/s", "/d"], None, "'--graphite'"),
    (["pass", "sync", "--memcached", "mc1:0", "/s", "/d"], None, "'--memcached'"),
    (["scan", "--graphite", ":2003", "/s"], None, "'--graphite'"),
    (["status", "--memcached", "[::1]:99999"], None, "'--memcached'"),
    (["pass", "copy", "/s", "/d"], "carbon1:port", "GRAPHITE"),  # FSCLONE_GRAPHITE
])
def test_a_bad_service_address_is_one_line_and_exit_2(tmp_path: Path, args: list[str],
                                                       graphite: str | None, named: str) -> None:
    """Refused as it is read, naming the flag (or the setting) that gave it: no pass starts."""
    state = tmp_path / "state"
    proc = fsclone(*args, state=state, graphite=graphite) if graphite else \
        fsclone(*args, state=state)
    assert proc.returncode == 2
    [line] = proc.stderr.decode().splitlines()
    assert line.startswith("fsclone: ") and named in line and "address" in line, line
    assert not (tmp_path / "state").exists()
