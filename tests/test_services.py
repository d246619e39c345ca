"""Smoke tests proving each real-server fixture works end to end (see tests/services.py)."""

import subprocess
import sys
import time
import uuid
from collections.abc import Callable

import graphyte
import pika
import pytest
from pymemcache.client.base import Client

from tests.services import CarbonServer, MemcachedServer, RabbitMQServer, accepts, skip_or_fail

# Only rank 0 prints: mpirun may interleave the ranks' output even within a line.
MPI_PROGRAM = """
from mpi4py import MPI
comm = MPI.COMM_WORLD
total = comm.allreduce(comm.Get_rank() + 1)
reports = comm.gather((comm.Get_rank(), comm.Get_size(), total), root=0)
if comm.Get_rank() == 0:
    print(reports, flush=True)
"""


def test_missing_server_skips_locally_but_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "")
    with pytest.raises(pytest.skip.Exception):
        skip_or_fail("no server")
    monkeypatch.setenv("CI", "1")
    with pytest.raises(pytest.fail.Exception):
        skip_or_fail("no server")


@pytest.mark.service
def test_memcached_set_incr_get(memcached_server: MemcachedServer) -> None:
    client = Client((memcached_server.host, memcached_server.port), connect_timeout=5, timeout=5)
    key = f"fsclone-{uuid.uuid4().hex}"
    try:
        client.set(key, b"40")
        assert client.incr(key, 2) == 42
        assert client.get(key) == b"42"
    finally:
        client.close()


@pytest.mark.service
def test_rabbitmq_persistent_message_survives_restart_and_crash(
    rabbitmq_server: RabbitMQServer,
) -> None:
    queue = f"fsclone-test-{uuid.uuid4().hex}"
    body = uuid.uuid4().bytes
    params = pika.URLParameters(rabbitmq_server.url())

    connection = pika.BlockingConnection(params)
    channel = connection.channel()
    channel.confirm_delivery()  # basic_publish now raises unless the broker confirms
    channel.queue_declare(queue, durable=True)
    channel.basic_publish(
        "", queue, body, pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)
    )
    connection.close()

    try:
        rabbitmq_server.stop()
        rabbitmq_server.start()
        vhost = rabbitmq_server.vhost
        listed = rabbitmq_server.ctl("-q", "list_queues", "-p", vhost, "name", "messages")
        assert f"{queue}\t1" in listed.splitlines()

        rabbitmq_server.kill()
        assert not accepts(rabbitmq_server.host, rabbitmq_server.port)
        rabbitmq_server.start()
        connection = pika.BlockingConnection(params)
        method, _, received = connection.channel().basic_get(queue, auto_ack=True)
        connection.close()
        assert method is not None, "the persistent message was lost"
        assert received == body
    finally:
        rabbitmq_server.start()  # leave the session's broker up for the next test


@pytest.mark.service
def test_carbon_metric_reaches_whisper(carbon_server: CarbonServer) -> None:
    metric = f"fsclone.test.m{uuid.uuid4().hex}"
    now = int(time.time())
    sender = graphyte.Sender(carbon_server.host, port=carbon_server.port, protocol="tcp")
    sender.send(metric, 1.5, timestamp=now - 1)
    sender.send(metric, 2.5, timestamp=now)

    points = carbon_server.wait_series(metric, lambda points: len(points) == 2, deadline=30)

    assert points == [(now - 1, 1.5), (now, 2.5)]


@pytest.mark.service
def test_mpirun_two_ranks_allreduce(require_mpi: Callable[[int], list[str]]) -> None:
    proc = subprocess.run(
        [*require_mpi(2), sys.executable, "-c", MPI_PROGRAM],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[(0, 2, 3), (1, 2, 3)]", proc.stderr
