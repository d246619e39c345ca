"""Which transport a pass uses: the one place that decides, so each transport adds one line (and
its name to fsclone.options.TRANSPORTS, the values of ``--transport``)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from fsclone.config import Config
from fsclone.engine.worker import worker_name
from fsclone.errors import UsageError
from fsclone.options import TRANSPORTS
from fsclone.transport.base import Transport
from fsclone.transport.depth import Concurrency, choose_depth
from fsclone.transport.local import LocalTransport
from fsclone.transport.mpi import MpiJob, in_mpi_job

if TYPE_CHECKING:  # the pool of worker processes is an amqp rank's only
    from fsclone.transport.pool import Service


def choose(cfg: Config, env: Mapping[str, str]) -> str:
    """``cfg.transport`` if named; else amqp when a broker is configured (also under srun or
    mpirun: see :func:`by_rank`), mpi when run by srun/mpirun, local otherwise."""
    kind = cfg.transport or "auto"
    if kind not in TRANSPORTS:
        raise UsageError(f"unknown transport {kind!r}: one of {', '.join(TRANSPORTS)}")
    if kind != "auto":
        return kind
    if cfg.broker:
        return "amqp"
    return "mpi" if in_mpi_job(env) else "local"


def by_rank(kind: str, env: Mapping[str, str]) -> bool:
    """Whether this process is one rank of a job in which rank 0 coordinates and the others
    work: always for mpi, and for amqp under srun/mpirun (the ranks consume the broker)."""
    return kind == "mpi" or (kind == "amqp" and in_mpi_job(env))


def transport(kind: str, cfg: Config, roots: tuple[str, str], job: MpiJob | None = None,
              ) -> tuple[Transport, Concurrency | None]:
    """The transport of a coordinator (rank 0 of ``job``, if any): the local one unless
    another serves (an MPI job of one rank works locally), with the concurrency chosen for
    a local one on the filesystems of ``roots`` (None: the other transports' workers are
    their own)."""
    if kind == "amqp":
        return amqp(cfg), None
    ranks = job.transport() if kind == "mpi" and job is not None else None
    if ranks is not None:
        return ranks, None
    chosen = choose_depth(cfg.depth, cfg.workers, os.cpu_count() or 1, roots)
    return LocalTransport(chosen.workers, threads=chosen.threads), chosen


def rank_service(kind: str, cfg: Config, rank: int, roots: tuple[str, str]) -> Service | None:
    """What a worker rank runs: an AMQP consumer for amqp, which serves the job's own
    ``roots`` only; None: the chunks rank 0 sends."""
    if kind != "amqp":
        return None
    from fsclone.transport.amqp.consumer import Consumer
    from fsclone.transport.amqp.settings import broker_settings, signing_key

    return Consumer(broker_settings(cfg), worker_name(rank), signing_key(cfg), (roots,))


def amqp(cfg: Config) -> Transport:
    """The AMQP transport, already connected: bad credentials or an unreachable broker fail
    here, before a pass record or the target is written. (pika is loaded only now.)"""
    from fsclone.transport.amqp.coordinator import AmqpTransport
    from fsclone.transport.amqp.settings import broker_settings, signing_key

    transport = AmqpTransport(broker_settings(cfg), signing_key(cfg))
    transport.connect()
    return transport
