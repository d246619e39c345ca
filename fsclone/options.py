"""Every option of fsclone, declared once.

An option is one field below: its name, type and default are the field's; its declaration
(:class:`Option`) rides on it and says where else it shows: its name in the site's config.py
(and so in the environment, ``FSCLONE_<NAME>``), its command-line flag and the pass commands
that take it, and whether it shapes a pass's result, so that a resume must be asked with the
same value. The fields of :class:`PassOptions` are those a worker needs: every PassSpec carries
them. :class:`Options` adds those only the coordinating side reads (the CLI, the launcher,
transports, sinks).

Derived from here, never written again: the settings table and the environment
(fsclone.config), ``Config``'s fields, the flags of each command (fsclone.cli), the spec a pass
starts with (fsclone.engine.launch.build_spec) and the resume check (fsclone.spec).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import click

from fsclone import optionvalues as values
from fsclone.ages import parse_age
from fsclone.fsprofile import parse_overrides
from fsclone.rules import effective

#: the pass commands (``fsclone pass OP``), and those with ``pass resume``: the commands that
#: run a pass
PASSES = ("copy", "delete", "mtime", "sync", "verify")
RUNS = (*PASSES, "resume")
#: the ways chunks reach workers (fsclone.transport.select)
TRANSPORTS = ("auto", "local", "amqp", "mpi")
#: what a new file's Lustre layout is (fsclone.fs.lustre), and what becomes of HSM-released ones
LAYOUTS = ("keep", "target-default")
RELEASED = ("skip", "copy")
#: the passes that create files
_CREATING = ("copy", "sync")


def _same(value: Any) -> Any:
    return value


@dataclass(frozen=True)
class Option:
    """Where one option shows besides its field. ``name`` and ``default`` are the field's."""

    name: str = ""
    default: Any = None
    help: str = ""  # the flag's
    #: its name in the site's config.py ("" for none), and how a value there (or in the
    #: environment, always a string) becomes the option's
    setting: str = ""
    parse: Callable[[Any], Any] = str
    #: its flag ("" for none), with a short form, click's type of the flag's value, and what
    #: the flag's value becomes as the option's value
    flag: str = ""
    short: str = ""
    flag_type: click.ParamType | None = None
    metavar: str | None = None
    flag_default: Any = None  # None: not given, so the settings below the flags apply
    show_default: bool = False
    from_flag: Callable[[Any], Any] = _same
    #: the commands of ``fsclone pass`` that take the flag
    commands: tuple[str, ...] = ()
    #: part of the request: a resume is refused when asked with another value. ``compare``
    #: brings a value to a form that compares by meaning; ``spell`` writes one as the flag's
    #: argument
    shapes: bool = False
    compare: Callable[[Any], Any] = _same
    spell: Callable[[Any], str] = str

    @property
    def env(self) -> str:
        """The environment variable that sets it ("" for none)."""
        return f"FSCLONE_{self.setting.upper()}" if self.setting else ""


def option(default: Any, **declaration: Any) -> Any:
    """A field of :class:`PassOptions` or :class:`Options` with its :class:`Option`."""
    return field(default=default, metadata={"option": Option(**declaration)})


# -- the options -------------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class PassOptions:
    """The options a worker needs: the fields every PassSpec carries."""

    dry_run: bool = option(False, flag="--dry-run", short="-n", commands=PASSES, shapes=True,
                           help="Show what would change; change nothing.")
    checksum: bool = option(False, flag="--checksum", short="-c", commands=PASSES,
                            shapes=True, help="Compare content by xxhash, not size and mtime.")
    modify_window_ns: int = option(
        0, flag="--modify-window", flag_type=values.Seconds(), metavar="SECS",
        from_flag=values.to_ns, commands=PASSES, shapes=True, spell=values.ns_as_seconds,
        help="Times this close count as equal (coarse-time filesystems).")
    oldest: int | None = option(
        None, setting="OLDEST_DATE", parse=values.age, flag="--oldest", metavar="AGE",
        from_flag=parse_age, commands=PASSES, shapes=True, compare=values.no_age,
        spell=values.in_seconds, help="Skip files not read for AGE (atime), e.g. 90d. OLDEST_DATE.")
    newest: int | None = option(
        None, setting="NEWEST_DATE", parse=values.age, flag="--newest", metavar="AGE",
        from_flag=parse_age, commands=PASSES, shapes=True, compare=values.no_age,
        spell=values.in_seconds,
        help="Skip files written in the last AGE (mtime), e.g. 1d. NEWEST_DATE.")
    #: rsync's filter rules, in order ('- PATTERN', '+ PATTERN', '!': fsclone.rules): the
    #: site's EXCLUDES first, then those of --filter, --exclude, --include, --exclude-from and
    #: --include-from in the order given (fsclone.cli.filterflags gathers them; a flag given
    #: several times adds to the setting's list, fsclone.config.load)
    filter_rules: tuple[str, ...] = option(
        (), setting="EXCLUDES", parse=values.excludes, flag="--filter", metavar="RULE",
        commands=PASSES, shapes=True, compare=effective,
        help="An rsync rule: '- PATTERN' excludes, '+ PATTERN' includes. Rules of --filter, "
             "--exclude, --include, --exclude-from, --include-from apply in the order given: "
             "the first that matches decides.")
    #: the delete guards: refuse to delete more than this many entries; refuse to delete at
    #: all unless the source root holds this name
    max_delete: int | None = option(
        None, setting="MAX_DELETE", parse=values.count(0), flag="--max-delete",
        flag_type=click.IntRange(min=0), metavar="N", commands=PASSES, shapes=True,
        help="Refuse to delete anything if more than N entries would go.")
    sentinel: str | None = option(None, setting="SENTINEL", flag="--sentinel", metavar="NAME",
                                  commands=PASSES, shapes=True,
                                  help="Refuse to delete unless SRC/NAME exists.")
    sample: float = option(1.0, flag="--sample", flag_type=click.FloatRange(0, 1, min_open=True),
                           metavar="F", commands=("verify",), shapes=True,
                           help="Check a random fraction F of the files [default: all].")
    seed: int = option(0, flag="--seed", flag_type=click.IntRange(0, 2**64 - 1), flag_default=0,
                       show_default=True, commands=("verify",), shapes=True,
                       help="Which sample: the same seed draws the same files.")
    metadata_only: bool = option(
        False, flag="--metadata-only", commands=("verify",), shapes=True,
        help="Compare types, sizes, owners, modes, times, links, xattrs; no data.")
    #: the flag names the file the coordinator writes; a worker learns only that its results
    #: carry manifest rows
    manifest: bool = option(
        False, flag="--manifest", flag_type=click.Path(dir_okay=False), metavar="FILE",
        from_flag=bool, commands=("verify",),
        help="Write path, size, mtime and xxh3-128 of every file checked (TSV).")
    #: directories on another device than SRC's root are skipped
    one_file_system: bool = option(
        False, flag="--one-file-system", short="-x", commands=PASSES, shapes=True,
        help="Do not walk into directories of SRC on other filesystems (mounts).")
    #: the list's path (the Config), or ``SHA256:PATH`` (the spec): what the copy takes
    files_from: str = option(
        "", flag="--files-from", flag_type=click.Path(dir_okay=False), metavar="FILE",
        from_flag=os.path.abspath, commands=("copy",), shapes=True, compare=values.list_digest,
        spell=values.list_path,
        help="Copy exactly the paths FILE lists (relative to SRC; one a line, or NUL-separated): "
             "directories made, not walked; DIR/ takes its entries too.")
    #: Lustre → Lustre: each new file is created with its source's layout ("keep"), or with
    #: whatever the target's directory gives it ("target-default")
    layout: str = option(
        "keep", setting="LAYOUT", parse=values.one_of(LAYOUTS), flag="--layout",
        flag_type=click.Choice(LAYOUTS), commands=_CREATING, shapes=True,
        help="Lustre to Lustre: create files with their source's striping (keep), or the "
             "target's default (target-default) [default: keep]. LAYOUT.")
    #: a Lustre source's HSM-released files (data on tape only): left and listed ("skip"), or
    #: read, which recalls each from tape ("copy")
    released: str = option(
        "skip", setting="RELEASED", parse=values.one_of(RELEASED), flag="--released",
        flag_type=click.Choice(RELEASED), commands=_CREATING, shapes=True,
        help="Lustre HSM-released files: skip them and list them in the pass's state "
             "directory (skip), or read them, recalling each from tape (copy) "
             "[default: skip]. RELEASED.")
    #: source pool → target pool, for the layouts kept; and the target's pools, where known
    #: (None: a pool the target lacks is asked for, and its refusal counted as a fallback)
    pool_map: tuple[tuple[str, str], ...] = option((), setting="POOL_MAP",
                                                   parse=values.pool_map)
    target_pools: tuple[str, ...] | None = option(None, setting="TARGET_POOLS",
                                                  parse=values.pool_names)
    #: a sync of the directories a watcher recorded as changed (fsclone.engine.changes)
    changes: bool = option(
        False, flag="--changes", commands=("sync",), shapes=True,
        help="Sync only the directories changed since the last complete pass sync, as a "
             "watcher recorded them; refused without a trustworthy record.")
    #: the most the pass's workers read or write together, per second (None: no limit); a
    #: run's own, not the pass's: a resume runs at the limits it is given
    bwlimit: float | None = option(
        None, setting="BWLIMIT", parse=values.rate(values.BINARY), flag="--bwlimit",
        flag_type=values.Rate(values.BINARY), metavar="BYTES", commands=RUNS,
        help="Move at most BYTES a second, all workers together (k, M, G: powers of 1024). "
             "BWLIMIT.")
    max_rate: float | None = option(
        None, setting="MAX_RATE", parse=values.rate(values.DECIMAL), flag="--max-rate",
        flag_type=values.Rate(values.DECIMAL), metavar="FILES", commands=RUNS,
        help="Take at most FILES entries a second, all workers together (k, M: powers of "
             "1000). MAX_RATE.")
    verbose: bool = option(False, flag="--verbose", short="-v", commands=PASSES,
                           help="Print every change made.")
    #: the pass whose failed items this pass re-runs, else ""
    retry_of: str = option("", flag="--retry-errors", metavar="ID", commands=("copy",),
                           help="Re-run only the items pass ID listed as failed, on its roots.")
    #: the sizes that shape chunks only: a resume keeps the stored ones
    large_file_size: int = option(64 << 20, setting="LARGE_FILE_SIZE", parse=values.count(1))
    range_size: int = option(64 << 20, setting="RANGE_SIZE", parse=values.count(1))
    dir_slice: int = option(5000, setting="DIR_SLICE", parse=values.count(1))


@dataclass(frozen=True, kw_only=True)
class Options(PassOptions):
    """Every option: those of the pass, and those only the coordinating side reads."""

    workers: int = option(os.cpu_count() or 1, setting="WORKERS", parse=values.count(1),
                          flag="--workers", short="-w", flag_type=click.IntRange(1, 4096),
                          commands=RUNS, help="Worker processes [default: cores].")
    #: chunks worked on at once, all workers together (None: chosen from the filesystems at
    #: pass start, fsclone.transport.depth); the local transport's, a run's own
    depth: int | None = option(
        None, setting="DEPTH", parse=values.count(1), flag="--depth",
        flag_type=click.IntRange(1, 4096), metavar="N", commands=RUNS,
        help="Chunks worked on at once, threads within the workers [default: the cores on a "
             "local filesystem, more where each request is a round trip]. DEPTH.")
    transport: str | None = option(
        None, setting="TRANSPORT", flag="--transport", flag_type=click.Choice(TRANSPORTS),
        flag_default="auto", show_default=True, from_flag=values.auto_is_unset, commands=RUNS,
        help="How chunks reach workers; auto: amqp when a broker is set (under srun/mpirun the "
             "other ranks consume it), else mpi when run by srun/mpirun, else local. TRANSPORT.")
    broker: str | None = option(
        None, setting="BROKER", flag="--broker", metavar="URL", commands=RUNS,
        help="amqp://USER@HOST[:PORT]/VHOST for `fsclone worker`s (no password: see "
             "PASSWORD_FILE). BROKER.")
    state_dir: str = option("", setting="STATE_DIR", flag="--state-dir", metavar="DIR",
                            commands=RUNS, help="Where pass records live.")
    restart: bool = option(False, flag="--restart", commands=PASSES,
                           help="Start anew instead of resuming.")
    #: what the filter flags said, each in its order: filter_rules holds them all in order
    excludes: tuple[str, ...] = option((), flag="--exclude", metavar="PATTERN", commands=PASSES,
                                       help="Leave matching entries alone (rsync's pattern).")
    includes: tuple[str, ...] = option((), flag="--include", metavar="PATTERN", commands=PASSES,
                                       help="Do not exclude matching entries (rsync's pattern).")
    exclude_from: tuple[str, ...] = option(
        (), flag="--exclude-from", flag_type=click.Path(dir_okay=False), metavar="FILE",
        commands=PASSES, help="--exclude each pattern in FILE, one a line (';' or '#' starts a "
                              "comment line).")
    include_from: tuple[str, ...] = option(
        (), flag="--include-from", flag_type=click.Path(dir_okay=False), metavar="FILE",
        commands=PASSES, help="--include each pattern in FILE, one a line.")
    report_interval: float = option(10.0, setting="REPORT_INTERVAL", parse=values.seconds)
    #: seconds between progress lines where stderr is no terminal (a batch job's output) and
    #: in the log file; 0: none (the terminal's live line and the summary stay)
    progress: float = option(
        60.0, setting="PROGRESS", parse=values.seconds_or_none, flag="--progress",
        flag_type=values.Seconds(), metavar="SECS", commands=RUNS,
        help="A progress line every SECS when stderr is not a terminal, 0 for none "
             "[default: 60]. PROGRESS.")
    log_file: str | None = option(
        None, setting="LOG_FILE", flag="--log-file", metavar="PATH", commands=RUNS,
        help="Also append what fsclone prints, with times, to PATH (made 0600). LOG_FILE.")
    #: ``fsclone watch``: a batch of changes is applied once the events stay quiet this long,
    #: or once the oldest waited the second (a steady stream never goes quiet)
    watch_quiet: float = option(0.5, setting="WATCH_QUIET", parse=values.seconds)
    watch_max_wait: float = option(2.0, setting="WATCH_MAX_WAIT", parse=values.seconds)
    #: the default SRC and DST
    source_mount: str | None = option(None, setting="source_mount")
    target_mount: str | None = option(None, setting="target_mount")
    username: str | None = option(None, setting="USERNAME")
    password_file: str | None = option(None, setting="PASSWORD_FILE")
    broker_ca_file: str | None = option(None, setting="BROKER_CA_FILE")
    broker_cert_file: str | None = option(None, setting="BROKER_CERT_FILE")
    broker_key_file: str | None = option(None, setting="BROKER_KEY_FILE")
    memcached: str | None = option(
        None, setting="MEMCACHED", parse=values.address, flag="--memcached",
        flag_type=values.Address(), metavar="HOST:PORT", commands=RUNS,
        help="memcached for the live view of the pass (fsclone status). MEMCACHED.")
    graphite: str | None = option(
        None, setting="GRAPHITE", parse=values.address, flag="--graphite",
        flag_type=values.Address(), metavar="HOST:PORT", commands=RUNS,
        help="carbon's plaintext listener for the pass's metrics. GRAPHITE.")
    graphite_prefix: str = option("fsclone", setting="GRAPHITE_PREFIX")
    #: the Graphite node naming the migration: "" for the target's basename
    pass_label: str = option("", setting="PASS_LABEL")
    #: (SRC, DST) prefixes whose passes a standalone ``fsclone worker`` serves (none: no pass)
    allowed_roots: tuple[tuple[str, str], ...] = option((), setting="ALLOWED_ROOTS",
                                                        parse=values.root_pairs)
    #: the Lustre client's ``lfs``, and the changelog user of each MDT of the source: set,
    #: the source's changelogs feed ``pass sync --changes`` (fsclone.changes.changelog)
    lfs: tuple[str, ...] = option(("lfs",), setting="LFS", parse=values.command)
    changelog_users: tuple[tuple[str, str], ...] = option(
        (), setting="CHANGELOG_USERS", parse=values.changelog_users)
    #: the secret shared by the amqp coordinator and its workers (fsclone.signing)
    signing_key_file: str | None = option(None, setting="SIGNING_KEY_FILE")
    #: what to take as found of each side's filesystem, whatever the probes say
    #: (fsclone.fsprofile; applied at a pass's start, which its record then keeps)
    profile_overrides: Mapping[str, Mapping[str, Any]] | None = option(
        None, setting="PROFILE", parse=parse_overrides)


def _declared(cls: type) -> dict[str, Option]:
    return {f.name: dataclasses.replace(f.metadata["option"], name=f.name, default=f.default)
            for f in fields(cls)}


#: every option by name, in the order declared (the pass's first)
OPTIONS: Mapping[str, Option] = _declared(Options)
#: the options of the pass, which every PassSpec carries
PASS_OPTIONS: Mapping[str, Option] = {f.name: OPTIONS[f.name] for f in fields(PassOptions)}
#: the options that shape a pass's result, in the order a refused resume names them
SHAPING: tuple[Option, ...] = tuple(o for o in OPTIONS.values() if o.shapes)


def pass_options(options: PassOptions) -> dict[str, Any]:
    """The values of the pass's options in ``options`` (a Config, or a PassSpec)."""
    return {name: getattr(options, name) for name in PASS_OPTIONS}
