"""The command line: parses, builds the Config, calls the engine. No logic of its own.

One module per command family; each registers its commands on :data:`cli`.
"""

from __future__ import annotations

import importlib
import signal
import sys
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

import click

from fsclone import __version__
from fsclone.errors import FscloneError, Terminated
from fsclone.options import OPTIONS, Option

EXIT_OK, EXIT_ITEMS_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
#: no item failed, but some files changed while they were copied and did not go over: run the
#: pass again
EXIT_CHANGED = 3

Decorator = Callable[[Any], Any]  # a click option or argument


def flag_option(name: str, **override: Any) -> Decorator:
    """The click option of the declared option ``name`` (fsclone.options); ``override``
    changes what one command says of it."""
    o = OPTIONS[name]
    kind: dict[str, Any] = {"type": o.flag_type}
    if isinstance(o.default, bool) and o.flag_type is None:
        kind = {"is_flag": True}
    elif isinstance(o.default, tuple):  # given several times
        kind = {"multiple": True}
    said = {"default": o.flag_default, "show_default": o.show_default, "metavar": o.metavar,
            "help": o.help, **override}
    return click.option(o.flag, *([o.short] if o.short else []), o.name, **kind, **said)


def _any(o: Option) -> bool:
    return True


def flag_options(command: str, where: Callable[[Option], bool] = _any) -> list[Decorator]:
    """The click options of the declared options that ``fsclone pass COMMAND`` takes and
    ``where`` picks, in the order declared."""
    return [flag_option(name) for name, o in OPTIONS.items() if command in o.commands and where(o)]


def given(kw: dict[str, Any]) -> dict[str, Any]:
    """The declared options among a command's arguments ``kw``, as values of the options (for
    :func:`fsclone.config.load`); None: not given."""
    return {name: None if kw[name] is None else OPTIONS[name].from_flag(kw[name])
            for name in OPTIONS if name in kw}


#: options several commands share
CONFIG_OPTION = click.option("--config", "config_file", metavar="FILE",
                             help="Site config (config.py); also FSCLONE_CONFIG.")
WORKERS_OPTION = flag_option("workers")
STATE_DIR_OPTION = flag_option("state_dir")


def decorate(f: Callable[..., Any], options: Sequence[Decorator]) -> Callable[..., Any]:
    """Apply click options in the order they are listed (and --help shows them)."""
    for option in reversed(options):
        f = option(f)
    return f


#: command name -> the module that registers it on :data:`cli`
COMMANDS = {"pass": "passes", "status": "status", "errors": "status", "scan": "status",
            "worker": "worker", "watch": "watch"}


class LazyGroup(click.Group):
    """Imports a command's module only when that command runs (or help lists it): a pass
    should not pay at every start for the libraries of ``status`` or ``worker``."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in COMMANDS and name not in self.commands:
            importlib.import_module(f"fsclone.cli.{COMMANDS[name]}")
        return self.commands.get(name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fsclone")
def cli() -> None:
    """fsclone: make DST an exact copy of SRC, in parallel passes."""


def _terminated(signum: int, frame: FrameType | None) -> None:
    """SIGTERM (a walltime end, scancel, a shutdown) stops a pass as Ctrl-C does, record kept."""
    raise Terminated


def main() -> None:
    """Entry point: every error is one line on stderr and an exit code (2: usage or fatal;
    130 interrupted by SIGINT or SIGTERM)."""
    signal.signal(signal.SIGTERM, _terminated)
    try:
        cli.main(standalone_mode=False)
    except click.UsageError as exc:
        print(f"fsclone: {exc.format_message()} (see --help)", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    except (click.exceptions.Abort, KeyboardInterrupt):  # click turns Ctrl-C into Abort
        print("fsclone: interrupted; run the same command again to resume", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except FscloneError as exc:
        print(f"fsclone: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        print(f"fsclone: {exc.format_message()}", file=sys.stderr)
        sys.exit(exc.exit_code)
