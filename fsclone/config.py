"""Configuration: defaults < the site's ``config.py`` < ``FSCLONE_*`` environment < flags.

The site file is Python, like the SDSC tool's: ``USERNAME``, ``OLDEST_DATE``, ``NEWEST_DATE``,
``REPORT_INTERVAL``, ``source_mount``, ``target_mount`` keep their meaning; see
``config.py.example`` for every setting.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from fsclone.ages import parse_age
from fsclone.errors import ConfigError, FscloneError


def _default_state_dir() -> str:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                            "state")
    return os.path.join(base, "fsclone")


@dataclass(frozen=True)
class Config:
    workers: int = os.cpu_count() or 1
    state_dir: str = ""
    report_interval: float = 10.0
    oldest: int | None = None
    newest: int | None = None
    source_mount: str | None = None
    target_mount: str | None = None
    username: str | None = None
    broker: str | None = None
    password_file: str | None = None
    transport: str | None = None
    broker_ca_file: str | None = None
    broker_cert_file: str | None = None
    broker_key_file: str | None = None
    memcached: str | None = None
    graphite: str | None = None
    graphite_prefix: str = "fsclone"
    max_delete: int | None = None
    sentinel: str | None = None
    excludes: tuple[str, ...] = ()
    large_file_size: int = 64 << 20
    range_size: int = 64 << 20
    dir_slice: int = 5000
    #: (SRC, DST) prefixes whose passes a standalone ``fsclone worker`` serves (none: no pass)
    allowed_roots: tuple[tuple[str, str], ...] = ()
    #: the secret shared by the amqp coordinator and its workers (fsclone.signing)
    signing_key_file: str | None = None

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir or _default_state_dir())


def _age(v: Any) -> int | None:
    return parse_age(v if isinstance(v, int) else str(v))


def _count(least: int) -> Callable[[Any], int]:
    """A parser of whole numbers of at least ``least`` (bools are not numbers here)."""
    def parse(v: Any) -> int:
        if isinstance(v, bool) or (isinstance(v, float) and not v.is_integer()):
            raise ValueError("not a whole number")
        n = int(v)
        if n < least:
            raise ValueError(f"must be at least {least}")
        return n
    return parse


def _seconds(v: Any) -> float:
    """A finite number of seconds above zero."""
    secs = float(v)
    if not math.isfinite(secs) or secs <= 0:
        raise ValueError("must be a finite number of seconds above 0")
    return secs


def _root_pairs(v: Any) -> tuple[tuple[str, str], ...]:
    """(SRC, DST) prefix pairs: a list of pairs, or ``"SRC:DST,SRC:DST"`` (the environment's
    form). Each must be an absolute path."""
    items = [item.split(":") for item in v.split(",") if item] if isinstance(v, str) else v
    pairs = []
    for item in items:
        src, dst = (str(p) for p in item)
        if not (os.path.isabs(src) and os.path.isabs(dst)):
            raise ValueError(f"not a pair of absolute paths: {item!r}")
        pairs.append((os.path.normpath(src), os.path.normpath(dst)))
    return tuple(pairs)


def _globs(v: Any) -> tuple[str, ...]:
    return tuple(v.split(",")) if isinstance(v, str) else tuple(str(x) for x in v)


#: setting name in config.py → (Config field, parser)
SETTINGS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "WORKERS": ("workers", _count(1)),
    "STATE_DIR": ("state_dir", str),
    "REPORT_INTERVAL": ("report_interval", _seconds),
    "OLDEST_DATE": ("oldest", _age),
    "NEWEST_DATE": ("newest", _age),
    "source_mount": ("source_mount", str),
    "target_mount": ("target_mount", str),
    "USERNAME": ("username", str),
    "BROKER": ("broker", str),
    "PASSWORD_FILE": ("password_file", str),
    "TRANSPORT": ("transport", str),
    "BROKER_CA_FILE": ("broker_ca_file", str),
    "BROKER_CERT_FILE": ("broker_cert_file", str),
    "BROKER_KEY_FILE": ("broker_key_file", str),
    "MEMCACHED": ("memcached", str),
    "GRAPHITE": ("graphite", str),
    "GRAPHITE_PREFIX": ("graphite_prefix", str),
    "MAX_DELETE": ("max_delete", _count(0)),
    "SENTINEL": ("sentinel", str),
    "EXCLUDES": ("excludes", _globs),
    "LARGE_FILE_SIZE": ("large_file_size", _count(1)),
    "RANGE_SIZE": ("range_size", _count(1)),
    "DIR_SLICE": ("dir_slice", _count(1)),
    "ALLOWED_ROOTS": ("allowed_roots", _root_pairs),
    "SIGNING_KEY_FILE": ("signing_key_file", str),
}


def _parse(values: Mapping[str, Any], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key not in SETTINGS:
            raise ConfigError(f"{where}: unknown setting {key}")
        name, parser = SETTINGS[key]
        try:
            out[name] = parser(value) if value is not None else None
        except (TypeError, ValueError, FscloneError) as exc:
            raise ConfigError(f"{where}: bad value for {key}: {value!r} ({exc})") from None
    return out


def read_site_file(path: str) -> dict[str, Any]:
    """Execute the site's config.py and keep its settings (names not starting with '_')."""
    try:
        source = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    namespace: dict[str, Any] = {}
    try:
        exec(compile(source, path, "exec"), namespace)
    except Exception as exc:  # any error in the site's file is a config error
        raise ConfigError(f"config {path} is broken: {type(exc).__name__}: {exc}") from None
    values = {k: v for k, v in namespace.items()
              if not k.startswith("_") and not callable(v) and not isinstance(v, type(os))}
    return _parse(values, path)


def load(config_file: str | None, env: Mapping[str, str], flags: Mapping[str, Any]) -> Config:
    """Build the one frozen Config for this run. ``flags`` holds only options the user gave."""
    merged: dict[str, Any] = {}
    path = config_file or env.get("FSCLONE_CONFIG")
    if path:
        merged.update(read_site_file(path))
    from_env = {k: env[f"FSCLONE_{k.upper()}"] for k in SETTINGS if f"FSCLONE_{k.upper()}" in env}
    merged.update(_parse(from_env, "environment"))
    merged.update({k: v for k, v in flags.items() if v is not None})
    known = {f.name for f in fields(Config)}
    return replace(Config(), **{k: v for k, v in merged.items() if k in known})
