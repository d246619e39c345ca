"""The command line: parses, builds the Config, calls the engine. No logic of its own.

One module per command family; each registers its commands on :data:`cli`.
"""

from __future__ import annotations

import sys

import click

from fsclone import __version__
from fsclone.errors import FscloneError

EXIT_OK, EXIT_ITEMS_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fsclone")
def cli() -> None:
    """fsclone: make DST an exact copy of SRC, in parallel passes."""


def main() -> None:
    """Entry point: every error is one line on stderr and an exit code (2: usage or fatal)."""
    from fsclone.cli import passes, status, worker  # noqa: F401 - register their commands

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
