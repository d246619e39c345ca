"""``fsclone worker``: serve the passes of a broker, on as many nodes as you like."""

from __future__ import annotations

import logging
import os
import sys

import click

from fsclone.cli import CONFIG_OPTION, WORKERS_OPTION, cli, flag_option
from fsclone.config import load


@cli.command("worker")
@flag_option("broker",
             help="amqp://USER@HOST[:PORT]/VHOST (no password: see PASSWORD_FILE); BROKER.")
@CONFIG_OPTION
@WORKERS_OPTION
@click.option("--quiet", "-q", is_flag=True, help="Log only warnings and errors.")
def worker(broker: str | None, config_file: str | None, workers: int | None,
           quiet: bool) -> None:
    """Serve whatever pass is active on the broker until SIGTERM, which drains: the chunk in
    hand is finished, the rest goes back to the queue. Exit 2 if the broker refuses us or
    cannot be reached at start; later outages are waited out."""
    from fsclone.transport.amqp.consumer import serve  # loads pika

    cfg = load(config_file, os.environ, {"broker": broker, "workers": workers})
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s fsclone worker[%(process)d] %(message)s")
    logging.getLogger("pika").setLevel(logging.CRITICAL)  # its errors are ours to report
    sys.exit(serve(cfg))
