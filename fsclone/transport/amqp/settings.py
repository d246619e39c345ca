"""Where the broker is and how to log in, from the Config: never a password on a command line.

The URL names the user and vhost (``amqp://USERNAME@host/vhost``); the password comes from a
file that only its owner may read, by default ``~/.fsclone/rabbitmq_<USERNAME>.conf`` (the SDSC
tool kept ``rabbitmq/rabbitmq_<USERNAME>.conf``). With ``amqps://`` and a client certificate
(``BROKER_CERT_FILE``) the broker authenticates the certificate instead (EXTERNAL).

Whoever holds the broker's credentials can publish; what they cannot do is sign: the
coordinator and its workers share a secret of their own (``SIGNING_KEY_FILE``, see
fsclone.signing) that the broker never carries.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from fsclone.config import Config
from fsclone.errors import ConfigError, UsageError
from fsclone.private import read_private
from fsclone.signing import read_key

_DEFAULT_PORTS = {"amqp": 5672, "amqps": 5671}
_USERINFO = re.compile(r"(://[^:/@\s]*):[^@/\s]*@")


def redact(text: str) -> str:
    """``text`` with the password of any URL in it replaced by ``***``."""
    return _USERINFO.sub(r"\1:***@", text)


@dataclass(frozen=True)
class BrokerSettings:
    """Everything needed to open a connection; ``str()`` and ``repr()`` never show the secret."""

    scheme: str
    host: str
    port: int
    vhost: str
    username: str
    password: str | None = field(default=None, repr=False)
    password_file: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    def __str__(self) -> str:
        return f"{self.scheme}://{self.username}@{self.host}:{self.port}/{self.vhost}"


def default_password_file(username: str) -> Path:
    return Path.home() / ".fsclone" / f"rabbitmq_{username}.conf"


def read_password(path: str) -> str:
    """The first line of ``path``, refused unless only its owner can read or write it."""
    data = read_private(path, "password file", "deploy/rabbitmq/init.sh writes one; "
                        "PASSWORD_FILE names another")
    try:
        lines = data.decode().splitlines()
    except UnicodeDecodeError as exc:
        raise ConfigError(f"cannot read password file {path}: {exc}") from None
    password = lines[0].strip() if lines else ""
    if not password:
        raise ConfigError(f"password file {path} is empty")
    return password


def broker_settings(cfg: Config) -> BrokerSettings:
    """Parse ``cfg.broker`` and find the credentials; raise a one-line UsageError if unusable."""
    if not cfg.broker:
        raise UsageError("the amqp transport needs a broker: --broker amqp://USER@HOST/VHOST "
                         "or BROKER in the config")
    url = urlsplit(cfg.broker)
    shown = redact(cfg.broker)
    if url.scheme not in _DEFAULT_PORTS or not url.hostname:
        raise UsageError(f"bad broker URL {shown}: expected amqp://USER@HOST[:PORT]/VHOST "
                         "or amqps://...")
    if url.password is not None:
        raise UsageError(f"the broker URL {shown} holds a password: command lines and configs "
                         "are readable by others; put it in the password file instead")
    username = unquote(url.username or "") or cfg.username
    if not username:
        raise UsageError(f"the broker URL {shown} names no user and USERNAME is not set")
    try:
        port = url.port or _DEFAULT_PORTS[url.scheme]
    except ValueError:
        raise UsageError(f"bad port in broker URL {shown}") from None
    vhost = unquote(url.path[1:]) if len(url.path) > 1 else username
    cert = cfg.broker_cert_file
    if cert and url.scheme != "amqps":
        raise UsageError("BROKER_CERT_FILE needs an amqps:// broker URL")
    password_file = cfg.password_file or str(default_password_file(username))
    password = None if cert else read_password(password_file)
    return BrokerSettings(url.scheme, url.hostname, port, vhost, username, password,
                          None if cert else password_file, cfg.broker_ca_file, cert,
                          cfg.broker_key_file)


def signing_key(cfg: Config) -> bytes:
    """The secret of ``SIGNING_KEY_FILE``, which every amqp coordinator and worker needs."""
    if not cfg.signing_key_file:
        raise UsageError("the amqp transport needs SIGNING_KEY_FILE: a 0600 file holding a "
                         "secret shared by the coordinator's and the workers' nodes (see "
                         "docs/amqp.md)")
    return read_key(cfg.signing_key_file)
