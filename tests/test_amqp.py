"""The amqp transport against a real RabbitMQ on loopback: ``fsclone worker`` processes and a
coordinator, as a user runs them. A copy must be faithful and complete even when a worker, the
coordinator or the broker dies mid-pass; poison messages end in the pass's error list.

Needs the broker: skipped without it, failed when CI is set (see tests/services.py).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pika
import pytest

from fsclone.state import PassRecord, list_passes
from fsclone.transport.amqp.coordinator import DELIVERY_LIMIT
from fsclone.transport.amqp.wire import Queues
from tests.clirun import children, fsclone, fsclone_env, spawn
from tests.fstree import assert_rsync_clean, assert_same_tree, build_hostile_tree
from tests.midpass import held
from tests.services import RABBITMQ_BIN, RabbitMQServer, free_port, wait_for

pytestmark = pytest.mark.service


@dataclass
class Broker:
    """The session's RabbitMQ as fsclone sees it: a URL without password, a 0600 file."""

    server: RabbitMQServer
    password_file: Path

    @property
    def url(self) -> str:
        s = self.server
        return f"amqp://{s.user}@{s.host}:{s.port}/{s.vhost}"

    def channel(self) -> Any:
        """A channel of the test's own, to look into queues or play a rogue client."""
        return pika.BlockingConnection(pika.URLParameters(self.server.url())).channel()

    def queue_exists(self, name: str) -> bool:
        ch = self.channel()
        try:
            ch.queue_declare(name, passive=True)
        except pika.exceptions.ChannelClosedByBroker:
            return False
        finally:
            ch.connection.close()
        return True


@pytest.fixture
def broker(rabbitmq_server: RabbitMQServer, tmp_path: Path) -> Broker:
    password_file = tmp_path / "rabbitmq_fsclone.conf"
    password_file.write_text(rabbitmq_server.password + "\n")
    password_file.chmod(0o600)
    return Broker(rabbitmq_server, password_file)


@dataclass
class Workers:
    """``fsclone worker`` commands, each in its own process group (a node: kill it whole)."""

    broker: Broker
    logs: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, processes: int = 1, password_file: Path | None = None,
              url: str | None = None) -> subprocess.Popen[bytes]:
        log = self.logs / f"worker-{len(self.procs)}.log"
        env = fsclone_env(self.logs, password_file=password_file or self.broker.password_file)
        cmd = [sys.executable, "-m", "fsclone", "worker", "--broker", url or self.broker.url,
               "--workers", str(processes)]
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.procs.append(proc)
        return proc

    def log(self, proc: subprocess.Popen[bytes]) -> str:
        return (self.logs / f"worker-{self.procs.index(proc)}.log").read_text()

    def stop(self) -> None:
        """SIGTERM (drain) every group, SIGKILL what is left after the deadline."""
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture
def workers(broker: Broker, tmp_path: Path) -> Iterator[Workers]:
    logs = tmp_path / "logs"
    logs.mkdir()
    pool = Workers(broker, logs)
    yield pool
    pool.stop()


def busy_child(proc: subprocess.Popen[bytes]) -> int | None:
    """A worker process of this command that is running a chunk (its chunk thread exists)."""
    for child in children(proc.pid):
        try:
            if len(os.listdir(f"/proc/{child}/task")) > 1:
                return child
        except FileNotFoundError:
            continue
    return None


def when_busy(worker: subprocess.Popen[bytes], coordinator: subprocess.Popen[bytes]) -> None:
    """Wait until ``worker`` holds a chunk, while the pass still runs."""
    wait_for(lambda: busy_child(worker) or coordinator.poll() is not None, 60,
             "the worker to hold a chunk")
    assert coordinator.poll() is None, "the pass ended too soon"


def bulk_tree(root: Path, dirs: int, files: int, seed: int = 7) -> int:
    """``dirs`` directories of ``files`` small files in two levels; returns the entry count."""
    rng = random.Random(seed)
    for d in range(dirs):
        leaf = root / f"g{d % 10}" / f"d{d:04d}"
        leaf.mkdir(parents=True)
        for f in range(files):
            (leaf / f"f{f:03d}").write_bytes(rng.randbytes(rng.randint(0, 4096)))
    return count_entries(root)


def count_entries(root: Path) -> int:
    return sum(len(ds) + len(fs) for _, ds, fs in os.walk(root))


def record(state: Path) -> PassRecord | None:
    try:
        passes = list_passes(state)
    except TypeError:  # caught the record between its creation and its first row
        return None
    return passes[-1] if passes else None


def wait_progress(state: Path, chunks: int, timeout: float = 120) -> PassRecord:
    """Wait until the pass has committed ``chunks`` chunks and still has work outstanding."""
    def probe() -> PassRecord | None:
        rec = record(state)
        done = rec is not None and rec.counters.get("chunks_done", 0) >= chunks
        return rec if done and rec is not None and rec.outstanding else None

    return wait_for(probe, timeout, f"{chunks} chunks done")


def summary(proc: subprocess.CompletedProcess[bytes] | tuple[bytes, bytes]) -> dict[str, Any]:
    out = proc.stdout if isinstance(proc, subprocess.CompletedProcess) else proc[0]
    assert out, proc
    return json.loads(out.splitlines()[-1])


def copy_cmd(broker: Broker, src: Path, dst: Path) -> list[str | Path]:
    return ["pass", "copy", "--json", "--broker", broker.url, src, dst]


def assert_complete(out: dict[str, Any], entries: int) -> None:
    """Every chunk's result applied exactly once: each entry of the source scanned once."""
    assert out["status"] == "done", out
    assert out["error_count"] == 0, out["errors"]
    assert out["counters"]["scanned"] == entries, out["counters"]


def assert_queues_gone(broker: Broker, pass_id: str) -> None:
    queues = Queues.of(pass_id)
    for name in (queues.chunks, queues.results, queues.dead):
        assert not broker.queue_exists(name), f"{name} left on the broker"


# -- faithful copies ------------------------------------------------------------------------


def test_several_workers_make_a_faithful_copy(broker: Broker, workers: Workers,
                                              tmp_path: Path) -> None:
    src, dst, state = tmp_path / "src", tmp_path / "dst", tmp_path / "state"
    src.mkdir()
    build_hostile_tree(src)
    bulk_tree(src / "bulk", dirs=40, files=30)
    entries = count_entries(src)
    workers.start(2)
    workers.start(1)
    proc = fsclone(*copy_cmd(broker, src, dst), state=state, password_file=broker.password_file)
    assert proc.returncode == 0, proc.stderr.decode()
    out = summary(proc)
    assert_complete(out, entries)
    assert_same_tree(src, dst)
    assert_rsync_clean(src, dst)
    assert_queues_gone(broker, out["pass"])


def test_broker_from_config_and_a_rerun_finds_nothing_to_do(broker: Broker, workers: Workers,
                                                            tmp_path: Path) -> None:
    src, dst, state = tmp_path / "src", tmp_path / "dst", tmp_path / "state"
    entries = bulk_tree(src, dirs=12, files=10)
    workers.start(2)
    settings: dict[str, Any] = {"broker": broker.url, "password_file": broker.password_file}
    first = fsclone("pass", "copy", "--json", src, dst, state=state, **settings)
    assert first.returncode == 0, first.stderr.decode()
    again = summary(fsclone("pass", "copy", "--json", src, dst, state=state, **settings))
    assert_complete(again, entries)
    assert again["counters"].get("files_copied", 0) == 0
    assert_rsync_clean(src, dst)


# -- deaths mid-pass --------------------------------------------------------------------------


#: a file of ``big_tree`` that tests hold (tests.midpass.held) so that a pass is surely mid-way
LAST_FILE = "g9/d0299/f099"


@pytest.fixture(scope="module")
def big_tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """A source big enough to be mid-pass when something dies (only read: shared)."""
    src = tmp_path_factory.mktemp("big") / "src"
    return src, bulk_tree(src, dirs=300, files=100)


def test_worker_killed_mid_pass_loses_nothing(
        broker: Broker, workers: Workers, big_tree: tuple[Path, int], tmp_path: Path) -> None:
    (src, entries), dst, state = big_tree, tmp_path / "dst", tmp_path / "state"
    victim = workers.start(1)
    workers.start(1)
    with held(src / LAST_FILE):
        coordinator = spawn(*copy_cmd(broker, src, dst), state=state,
                            password_file=broker.password_file)
        wait_progress(state, 5)
        when_busy(victim, coordinator)
        os.killpg(victim.pid, signal.SIGKILL)  # the whole node: supervisor and worker
    out = coordinator.communicate(timeout=300)
    assert coordinator.returncode == 0, out[1].decode()
    assert_complete(summary(out), entries)
    assert_rsync_clean(src, dst)


def test_sigterm_drains_a_worker_and_the_rest_finish_the_pass(
        broker: Broker, workers: Workers, big_tree: tuple[Path, int], tmp_path: Path) -> None:
    (src, entries), dst, state = big_tree, tmp_path / "dst", tmp_path / "state"
    leaving = workers.start(2)
    with held(src / LAST_FILE):
        coordinator = spawn(*copy_cmd(broker, src, dst), state=state,
                            password_file=broker.password_file)
        wait_progress(state, 5)
        when_busy(leaving, coordinator)
        os.killpg(leaving.pid, signal.SIGTERM)
    assert leaving.wait(60) == 0, workers.log(leaving)
    assert coordinator.poll() is None, "the pass ended before SIGTERM"
    workers.start(1)
    out = coordinator.communicate(timeout=300)
    assert coordinator.returncode == 0, out[1].decode()
    assert_complete(summary(out), entries)
    assert_rsync_clean(src, dst)


@pytest.mark.parametrize("how", ["the same command", "pass resume ID"])
def test_coordinator_killed_mid_pass_resumes(broker: Broker, workers: Workers,
                                             big_tree: tuple[Path, int], tmp_path: Path,
                                             how: str) -> None:
    (src, entries), dst, state = big_tree, tmp_path / "dst", tmp_path / "state"
    workers.start(2)
    cmd = copy_cmd(broker, src, dst)
    with held(src / LAST_FILE):
        first = spawn(*cmd, state=state, password_file=broker.password_file)
        before = wait_progress(state, 10)
        first.kill()
        first.wait()
    if how == "pass resume ID":
        cmd = ["pass", "resume", before.spec.id, "--json", "--broker", broker.url]
    again = fsclone(*cmd, state=state, password_file=broker.password_file)
    assert again.returncode == 0, again.stderr.decode()
    out = summary(again)
    assert out["pass"] == before.spec.id  # the same pass, resumed
    assert_complete(out, entries)  # chunks finished before the kill were not applied again
    assert_rsync_clean(src, dst)
    assert_queues_gone(broker, out["pass"])


def test_broker_restart_mid_pass_loses_nothing(
        broker: Broker, workers: Workers, big_tree: tuple[Path, int], tmp_path: Path) -> None:
    (src, entries), dst, state = big_tree, tmp_path / "dst", tmp_path / "state"
    workers.start(1)
    with held(src / LAST_FILE):
        coordinator = spawn(*copy_cmd(broker, src, dst), state=state,
                            password_file=broker.password_file)
        wait_progress(state, 5)
        broker.server.stop()
        assert coordinator.poll() is None, "the pass ended before the restart"
    broker.server.start()
    out = coordinator.communicate(timeout=300)
    assert coordinator.returncode == 0, out[1].decode()
    assert b"reconnected to the broker" in out[1]
    assert_complete(summary(out), entries)
    assert_rsync_clean(src, dst)


# -- poison messages ------------------------------------------------------------------------


def _waiting_pass(broker: Broker, src: Path, dst: Path,
                  state: Path) -> tuple[subprocess.Popen[bytes], Queues]:
    """A coordinator with no worker yet: its root chunk waits in the queue."""
    coordinator = spawn(*copy_cmd(broker, src, dst), state=state,
                        password_file=broker.password_file)
    rec = wait_for(lambda: record(state), 60, "the pass record")
    queues = Queues.of(rec.spec.id)
    wait_for(lambda: broker.queue_exists(queues.chunks), 60, "the chunk queue")
    return coordinator, queues


def test_malformed_message_is_dead_lettered_and_reported(broker: Broker, workers: Workers,
                                                         tmp_path: Path) -> None:
    src, dst, state = tmp_path / "src", tmp_path / "dst", tmp_path / "state"
    bulk_tree(src, dirs=20, files=5)
    coordinator, queues = _waiting_pass(broker, src, dst, state)
    ch = broker.channel()
    ch.basic_publish("", queues.chunks, b'{"not": "a list of chunks"}',
                     pika.BasicProperties(delivery_mode=2))
    ch.connection.close()
    worker = workers.start(1)
    out = coordinator.communicate(timeout=300)
    assert coordinator.returncode == 1, out[1].decode()
    result = summary(out)
    assert result["error_count"] == 1
    assert "unreadable work message dead-lettered" in result["errors"][0]["message"]
    assert "not a non-empty JSON list" in result["errors"][0]["message"]
    assert worker.poll() is None, "a malformed message must not kill the worker"
    assert "malformed work message moved to " + queues.dead in workers.log(worker)
    assert_rsync_clean(src, dst)  # the real chunks were all done


def test_chunk_that_keeps_dying_is_dead_lettered_and_reported(broker: Broker, workers: Workers,
                                                              tmp_path: Path) -> None:
    src, dst, state = tmp_path / "src", tmp_path / "dst", tmp_path / "state"
    bulk_tree(src, dirs=3, files=2)
    coordinator, queues = _waiting_pass(broker, src, dst, state)
    ch = broker.channel()  # a worker that dies on the root chunk every time
    for _ in range(DELIVERY_LIMIT + 1):
        method = wait_for(lambda: ch.basic_get(queues.chunks)[0], 30, "the root chunk")
        ch.basic_nack(method.delivery_tag, requeue=True)
    ch.connection.close()
    wait_for(lambda: (rec := record(state)) and rec.errors, 60, "the dead chunk reported")
    workers.start(1)  # for the pass's last phase
    out = coordinator.communicate(timeout=300)
    assert coordinator.returncode == 1, out[1].decode()
    result = summary(out)
    assert result["error_count"] == 1
    error = result["errors"][0]
    assert error["op"] == "copy" and error["path"] == "."
    assert f"dead-lettered: delivered {DELIVERY_LIMIT + 1} times" in error["message"]


# -- refusals -------------------------------------------------------------------------------


def _refused(proc: subprocess.CompletedProcess[bytes], *words: str) -> None:
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("fsclone: "), err
    for word in words:
        assert word in err, err


@pytest.mark.parametrize("case", ["wrong password", "unreachable"])
def test_bad_credentials_or_no_broker_exit_2_and_write_nothing(
        broker: Broker, tmp_path: Path, case: str) -> None:
    src, dst, state = tmp_path / "src", tmp_path / "dst", tmp_path / "state"
    bulk_tree(src, dirs=1, files=1)
    words: tuple[str, ...]
    password_file, url, words = broker.password_file, broker.url, ("refused", "ACCESS_REFUSED")
    if case == "wrong password":
        password_file = tmp_path / "wrong.conf"
        password_file.write_text("not-the-password\n")
        password_file.chmod(0o600)
    else:
        url, words = f"amqp://fsclone@127.0.0.1:{free_port()}/fsclone", ("cannot reach",)
    run = fsclone("pass", "copy", "--broker", url, src, dst, state=state,
                  password_file=password_file, timeout=60)
    _refused(run, *words)
    assert not state.exists() and not dst.exists()
    assert broker.server.password not in run.stderr.decode()
    worker = fsclone("worker", "--broker", url, state=state, password_file=password_file,
                     timeout=60)
    _refused(worker, *words)


def test_credentials_stay_off_command_lines_and_open_files(broker: Broker,
                                                           tmp_path: Path) -> None:
    s = broker.server
    with_password = f"amqp://{s.user}:{s.password}@{s.host}:{s.port}/{s.vhost}"
    run = fsclone("worker", "--broker", with_password, state=tmp_path,
                  password_file=broker.password_file)
    _refused(run, "holds a password", ":***@")
    assert s.password not in run.stderr.decode()
    broker.password_file.chmod(0o640)
    _refused(fsclone("worker", "--broker", broker.url, state=tmp_path,
                     password_file=broker.password_file), "chmod 600")


def test_second_coordinator_for_a_target_is_refused_through_the_broker(
        broker: Broker, tmp_path: Path) -> None:
    """Two hosts (two state directories) cannot both coordinate one target."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    bulk_tree(src, dirs=2, files=2)
    first, _ = _waiting_pass(broker, src, dst, tmp_path / "host1")
    try:
        second = fsclone(*copy_cmd(broker, src, dst), state=tmp_path / "host2",
                         password_file=broker.password_file, timeout=60)
        _refused(second, "another coordinator serves")
    finally:
        first.terminate()
        first.wait(60)


# -- deployment -----------------------------------------------------------------------------


def test_init_script_makes_a_user_that_can_run_a_pass(rabbitmq_server: RabbitMQServer,
                                                      tmp_path: Path) -> None:
    """deploy/rabbitmq/init.sh: a vhost, a user limited to fsclone's names, a 0600 file."""
    script = Path(__file__).parent.parent / "deploy" / "rabbitmq" / "init.sh"
    credentials = tmp_path / "rabbitmq_alice.conf"
    env = rabbitmq_server.environ() | {
        "RABBITMQCTL": f"{RABBITMQ_BIN / 'rabbitmqctl'} -n {rabbitmq_server.nodename}"}
    for _ in range(2):  # and again: nothing changes
        subprocess.run(["bash", str(script), "alice", str(credentials)], env=env, check=True,
                       capture_output=True, timeout=300)
        assert credentials.stat().st_mode & 0o777 == 0o600
    password = credentials.read_text().strip()
    assert len(password) >= 24
    alice = Broker(rabbitmq_server, credentials)
    url = f"amqp://alice@{rabbitmq_server.host}:{rabbitmq_server.port}/alice"
    src, dst = tmp_path / "src", tmp_path / "dst"
    entries = bulk_tree(src, dirs=5, files=5)
    pool = Workers(alice, tmp_path)
    pool.start(1, url=url)
    try:
        run = fsclone("pass", "copy", "--json", "--broker", url, src, dst,
                      state=tmp_path / "state", password_file=credentials)
        assert run.returncode == 0, run.stderr.decode()
        assert_complete(summary(run), entries)
    finally:
        pool.stop()
    assert_rsync_clean(src, dst)
