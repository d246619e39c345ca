"""Typed errors. Each class maps to how the CLI reacts (exit code, one-line message)."""

from __future__ import annotations


class FscloneError(Exception):
    """Base of every error fsclone raises on purpose."""

    exit_code = 2


class UsageError(FscloneError):
    """Bad input from the user: paths, options, config. Nothing was written."""


class ConfigError(UsageError):
    """The site config file could not be read or holds a bad value."""


class Interrupted(FscloneError):
    """A pass stopped by SIGINT (Ctrl-C) or SIGTERM (a walltime end, scancel): its record is
    kept, marked interrupted, and the same command resumes it."""

    exit_code = 130


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised by the command line's handler so that it stops a pass the way Ctrl-C
    does (:class:`KeyboardInterrupt`), and the pass can still say which signal it was."""


class LockedError(FscloneError):
    """Another pass holds the lock on the same target."""


class GuardError(FscloneError):
    """A safety guard refused to delete (source root looks wrong, --max-delete exceeded)."""


class TransportError(FscloneError):
    """The transport could not be reached or failed as a whole (broker down, bad credentials)."""


class MessageError(FscloneError):
    """A chunk or result message is malformed or carries an unsafe path."""


class LayoutError(FscloneError):
    """A Lustre layout blob is truncated, garbled, or of a kind that cannot be re-used on
    another filesystem. Never fatal to a copy: the file keeps the target's default layout."""
