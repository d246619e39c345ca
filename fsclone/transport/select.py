"""Which transport a pass uses: the one place that decides, so each transport adds one line."""

from __future__ import annotations

from collections.abc import Mapping

from fsclone.config import Config
from fsclone.errors import UsageError
from fsclone.transport.base import Transport

TRANSPORTS = ("auto", "local", "amqp")


def choose(cfg: Config, env: Mapping[str, str]) -> str:
    """``cfg.transport`` if named; else amqp when a broker is configured, local otherwise.
    (``env``: where a launcher such as srun or mpirun shows itself, for the mpi transport.)"""
    kind = cfg.transport or "auto"
    if kind not in TRANSPORTS:
        raise UsageError(f"unknown transport {kind!r}: one of {', '.join(TRANSPORTS)}")
    if kind != "auto":
        return kind
    return "amqp" if cfg.broker else "local"


def amqp(cfg: Config) -> Transport:
    """The AMQP transport, already connected: bad credentials or an unreachable broker fail
    here, before a pass record or the target is written. (pika is loaded only now.)"""
    from fsclone.transport.amqp.coordinator import AmqpTransport
    from fsclone.transport.amqp.settings import broker_settings

    transport = AmqpTransport(broker_settings(cfg))
    transport.connect()
    return transport
