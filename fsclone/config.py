"""Configuration: defaults < the site's ``config.py`` < ``FSCLONE_*`` environment < flags.

The site file is Python, like the SDSC tool's: ``USERNAME``, ``OLDEST_DATE``, ``NEWEST_DATE``,
``REPORT_INTERVAL``, ``source_mount``, ``target_mount`` keep their meaning; see
``config.py.example`` for every setting.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fsclone.errors import ConfigError, FscloneError
from fsclone.options import OPTIONS, Option, Options


def _default_state_dir() -> str:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                            "state")
    return os.path.join(base, "fsclone")


class Config(Options):
    """The options of this run, each from the highest layer that sets it (see :func:`load`);
    its fields are declared in fsclone.options."""

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir or _default_state_dir())


#: setting name in config.py → its option
SETTINGS: dict[str, Option] = {o.setting: o for o in OPTIONS.values() if o.setting}


def _parse(values: Mapping[str, Any], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key not in SETTINGS:
            raise ConfigError(f"{where}: unknown setting {key}")
        option = SETTINGS[key]
        try:
            out[option.name] = option.parse(value) if value is not None else None
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
    from_env = {k: env[o.env] for k, o in SETTINGS.items() if o.env in env}
    merged.update(_parse(from_env, "environment"))
    for name, value in flags.items():
        if isinstance(value, tuple):  # a flag given several times adds to the setting's list
            value = (merged.get(name) or ()) + value
        if value is not None:
            merged[name] = value
    return Config(**merged)
