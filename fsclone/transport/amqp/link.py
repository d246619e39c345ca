"""Connections to the broker: parameters, one-line errors, and reconnection with backoff."""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable

import pika
import pika.credentials
import pika.exceptions as px

from fsclone.errors import ConfigError, TransportError
from fsclone.transport.amqp.settings import BrokerSettings, redact

log = logging.getLogger("fsclone.amqp")

#: seconds; a worker busy with a huge file still answers them (its I/O loop never stops)
HEARTBEAT = 30
PERSISTENT = pika.BasicProperties(delivery_mode=2, content_type="application/json")
_REFUSED = (px.AuthenticationError, px.ProbableAuthenticationError, px.ProbableAccessDeniedError)
#: AMQP reply codes that mean the connection is going away, not that we asked wrongly
_CONNECTION_CODES = {320, 501, 504, 505, 506, 541}


class BrokerAuthError(TransportError):
    """The broker refused our user or vhost: retrying will not help."""


class BrokerUnreachable(TransportError):
    """No broker answered: it may come back (a restart), so long-running loops retry."""


def describe(exc: BaseException) -> str:
    """A short reason for a pika error; pika often nests the useful one, or has none."""
    while exc.args and isinstance(exc.args[0], BaseException):
        exc = exc.args[0]
    inner = getattr(exc, "exception", None)
    if isinstance(inner, BaseException):
        exc = inner
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    if isinstance(exc, px.ConnectionClosedByBroker | px.ChannelClosedByBroker):
        return f"{exc.reply_code} {exc.reply_text.split(' - ')[0]}"
    return redact(str(exc)) or type(exc).__name__


def is_lost(exc: BaseException) -> bool:
    """Whether ``exc`` means the connection went away (broker restart, network), so a
    reconnection may cure it."""
    if isinstance(exc, _REFUSED):
        return False
    if isinstance(exc, px.ChannelClosedByBroker):
        return exc.reply_code in _CONNECTION_CODES
    return isinstance(exc, px.AMQPConnectionError | px.ChannelWrongStateError |
                      px.ConnectionWrongStateError)


def parameters(settings: BrokerSettings, name: str) -> pika.ConnectionParameters:
    credentials: pika.credentials.VALID_TYPES
    if settings.cert_file:
        credentials = pika.credentials.ExternalCredentials()
    else:
        credentials = pika.PlainCredentials(settings.username, settings.password or "")
    ssl_options = None
    if settings.scheme == "amqps":
        try:
            context = ssl.create_default_context(cafile=settings.ca_file)
            if settings.cert_file:
                context.load_cert_chain(settings.cert_file, settings.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"TLS files for {settings}: {exc}") from None
        ssl_options = pika.SSLOptions(context, settings.host)
    return pika.ConnectionParameters(
        host=settings.host, port=settings.port, virtual_host=settings.vhost,
        credentials=credentials, ssl_options=ssl_options, heartbeat=HEARTBEAT,
        connection_attempts=1, socket_timeout=10, blocked_connection_timeout=300,
        client_properties={"connection_name": name})


def connect(settings: BrokerSettings, name: str) -> pika.BlockingConnection:
    """Open a connection, or raise one of our TransportErrors with a one-line reason."""
    params = parameters(settings, name)
    try:
        return pika.BlockingConnection(params)
    except _REFUSED as exc:
        raise BrokerAuthError(_refusal(settings, exc)) from None
    except px.AMQPConnectionError as exc:
        raise BrokerUnreachable(f"cannot reach the broker at {settings}: {describe(exc)}") \
            from None


def _refusal(settings: BrokerSettings, exc: BaseException) -> str:
    """Why the broker refused us, with the fix that matches: RabbitMQ tells a missing vhost
    (530 "vhost ... not found") from a denied one and from a bad login."""
    who = f"the broker at {settings}"
    reason = describe(exc)
    if isinstance(exc, px.ProbableAccessDeniedError) and "not found" in reason:
        return (f"{who} has no vhost {settings.vhost!r}: create it (deploy/rabbitmq/init.sh, "
                "or load deploy/rabbitmq/definitions.json) or fix the vhost in the broker URL")
    if isinstance(exc, px.ProbableAccessDeniedError):
        return (f"{who} refused user {settings.username!r} on vhost {settings.vhost!r} "
                f"({reason}): give the user permissions there (deploy/rabbitmq/init.sh)")
    where = f"the password in {settings.password_file}" if settings.password_file else \
        "the client certificate"
    return (f"{who} refused user {settings.username!r} on vhost {settings.vhost!r} "
            f"({reason}): check the user name and {where}")


def check(settings: BrokerSettings) -> None:
    """Fail now, before anything is written, if the broker cannot be reached or refuses us."""
    connect(settings, "fsclone check").close()


class Backoff:
    """Growing pauses between reconnection attempts: quick after a blip, gentle when the
    broker stays down."""

    def __init__(self, first: float = 0.5, longest: float = 15.0) -> None:
        self.first, self.longest = first, longest
        self.delay = first

    def sleep(self, stop: Callable[[], bool] = lambda: False) -> None:
        """Sleep the current delay (in short steps, so a stop request is seen), then grow it."""
        deadline = time.monotonic() + self.delay
        while not stop() and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, 0.2))
        self.delay = min(self.delay * 2, self.longest)


def reconnect(settings: BrokerSettings, name: str,
              stop: Callable[[], bool] = lambda: False) -> pika.BlockingConnection | None:
    """Connect, retrying with backoff while the broker is unreachable; None if ``stop()`` turned
    true first. A refused login is raised at once."""
    backoff = Backoff()
    while not stop():
        try:
            return connect(settings, name)
        except BrokerUnreachable as exc:
            log.warning("%s; retrying in %.1f s", exc, backoff.delay)
            backoff.sleep(stop)
    return None
