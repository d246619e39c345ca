"""The amqp transport against a real RabbitMQ on loopback: ``fsclone worker`` processes and a
coordinator, as a user runs them. A copy must be faithful and complete even when a worker, the
coordinator or the broker dies mid-pass; poison messages end in the pass's error list.

Needs the broker: skipped without it, failed when CI is set (see tests/services.py).
"""

from __future__ import annotations

import json
import os
import random
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pika
import pytest

from fsclone.chunk import Result
from fsclone.spec import PassSpec
from fsclone.state.directory import new_pass_id
from fsclone.state.queries import PassRecord, list_passes
from fsclone.transport.amqp.coordinator import DELIVERY_LIMIT
from fsclone.transport.amqp.wire import Queues, decode_chunks, encode_results
from tests.clirun import children, fsclone, fsclone_env, spawn
from tests.fstree import (
    assert_rsync_clean,
    assert_same_tree,
    build_hostile_tree,
    snapshot,
    tree_diffs,
)
from tests.midpass import held
from tests.services import RABBITMQ_BIN, RabbitMQServer, free_port, wait_for

pytestmark = pytest.mark.service


@dataclass
class Broker:
    """The session's RabbitMQ as fsclone sees it: a URL without password, a 0600 file, and
    the site's signing key (a 0600 file too)."""

    server: RabbitMQServer
    password_file: Path
    key_file: Path

    @property
    def settings(self) -> dict[str, Any]:
        """The settings of a coordinator or a worker of this broker."""
        return {"password_file": self.password_file, "signing_key_file": self.key_file}

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


def private_file(path: Path, text: str) -> Path:
    path.write_text(text + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def broker(rabbitmq_server: RabbitMQServer, tmp_path: Path) -> Broker:
    return Broker(rabbitmq_server,
                  private_file(tmp_path / "rabbitmq_fsclone.conf", rabbitmq_server.password),
                  private_file(tmp_path / "signing.key", secrets.token_hex(32)))


@dataclass
class Workers:
    """``fsclone worker`` commands, each in its own process group (a node: kill it whole).
    They serve the passes of any roots below the session's temporary directory, unless told
    ``allowed`` ones ("" for none)."""

    broker: Broker
    logs: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, processes: int = 1, password_file: Path | None = None,
              url: str | None = None, allowed: str | None = None) -> subprocess.Popen[bytes]:
        log = self.logs / f"worker-{len(self.procs)}.log"
        everywhere = f"{self.logs.parent.parent}:{self.logs.parent.parent}"
        env = fsclone_env(self.logs, password_file=password_file or self.broker.password_file,
                          signing_key_file=self.broker.key_file,
                          allowed_roots=everywhere if allowed is None else allowed)
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


def copy_cmd(broker: Broker, src: Path, dst: Path, *extra: str) -> list[str | Path]:
    return ["pass", "copy", "--json", "--broker", broker.url, *extra, src, dst]


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
    proc = fsclone(*copy_cmd(broker, src, dst), state=state, **broker.settings)
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
    settings: dict[str, Any] = {"broker": broker.url, **broker.settings}
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
                            **broker.settings)
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
                            **broker.settings)
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
        first = spawn(*cmd, state=state, **broker.settings)
        before = wait_progress(state, 10)
        first.kill()
        first.wait()
    if how == "pass resume ID":
        cmd = ["pass", "resume", before.spec.id, "--json", "--broker", broker.url]
    again = fsclone(*cmd, state=state, **broker.settings)
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
                            **broker.settings)
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


def _waiting_pass(broker: Broker, src: Path, dst: Path, state: Path,
                  *extra: str) -> tuple[subprocess.Popen[bytes], Queues]:
    """A coordinator with no worker yet: its root chunk waits in the queue."""
    coordinator = spawn(*copy_cmd(broker, src, dst, *extra), state=state,
                        **broker.settings)
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
    assert "malformed or refused work message moved to " + queues.dead in workers.log(worker)
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


@pytest.mark.parametrize("case", ["wrong password", "unknown vhost", "unreachable"])
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
    elif case == "unknown vhost":
        url = broker.url.rsplit("/", 1)[0] + "/nosuch"
        words = ("has no vhost 'nosuch'", "definitions.json")
    else:
        url, words = f"amqp://fsclone@127.0.0.1:{free_port()}/fsclone", ("cannot reach",)
    run = fsclone("pass", "copy", "--broker", url, src, dst, state=state,
                  password_file=password_file, signing_key_file=broker.key_file, timeout=60)
    _refused(run, *words)
    assert not state.exists() and not dst.exists()
    assert broker.server.password not in run.stderr.decode()
    worker = fsclone("worker", "--broker", url, state=state, password_file=password_file,
                     signing_key_file=broker.key_file, timeout=60)
    _refused(worker, *words)
    if case == "unknown vhost":  # the password was right: no hint to check it
        assert "password" not in run.stderr.decode() + worker.stderr.decode()


def test_credentials_stay_off_command_lines_and_open_files(broker: Broker,
                                                           tmp_path: Path) -> None:
    s = broker.server
    with_password = f"amqp://{s.user}:{s.password}@{s.host}:{s.port}/{s.vhost}"
    run = fsclone("worker", "--broker", with_password, state=tmp_path,
                  **broker.settings)
    _refused(run, "holds a password", ":***@")
    assert s.password not in run.stderr.decode()
    broker.password_file.chmod(0o640)
    _refused(fsclone("worker", "--broker", broker.url, state=tmp_path,
                     **broker.settings), "chmod 600")


def test_second_coordinator_for_a_target_is_refused_through_the_broker(
        broker: Broker, tmp_path: Path) -> None:
    """Two hosts (two state directories) cannot both coordinate one target. On one host the
    flock on the target's root refuses the second first; dry runs share that lock (as two
    hosts whose filesystem shares no locks would not see each other's), so the broker's
    guard is what refuses here."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    bulk_tree(src, dirs=2, files=2)
    dst.mkdir()
    first, _ = _waiting_pass(broker, src, dst, tmp_path / "host1", "--dry-run")
    try:
        second = fsclone(*copy_cmd(broker, src, dst, "--dry-run"), state=tmp_path / "host2",
                         **broker.settings, timeout=60)
        _refused(second, "another coordinator serves")
    finally:
        first.terminate()
        first.wait(60)


# -- deployment -----------------------------------------------------------------------------


DEPLOY_RABBITMQ = Path(__file__).parent.parent / "deploy" / "rabbitmq"


def run_init_script(server: RabbitMQServer, user: str, credentials: Path) -> str:
    """deploy/rabbitmq/init.sh against the test node; its last line (the broker URL)."""
    env = server.environ() | {"RABBITMQCTL": f"{RABBITMQ_BIN / 'rabbitmqctl'} -n {server.nodename}"}
    run = subprocess.run(["bash", str(DEPLOY_RABBITMQ / "init.sh"), user, str(credentials)],
                         env=env, check=True, capture_output=True, text=True, timeout=300)
    assert credentials.stat().st_mode & 0o777 == 0o600
    return run.stdout.splitlines()[-1]


def assert_pass_runs_as(server: RabbitMQServer, user: str, credentials: Path,
                        tmp_path: Path) -> None:
    """A worker and a coordinator logged in as ``user`` (vhost of the same name) copy a tree."""
    key = private_file(tmp_path / "signing.key", secrets.token_hex(32))
    site = Broker(server, credentials, key)
    url = f"amqp://{user}@{server.host}:{server.port}/{user}"
    src, dst = tmp_path / "src", tmp_path / "dst"
    entries = bulk_tree(src, dirs=5, files=5)
    pool = Workers(site, tmp_path)
    pool.start(1, url=url)
    try:
        run = fsclone("pass", "copy", "--json", "--broker", url, src, dst,
                      state=tmp_path / "state", **site.settings)
        assert run.returncode == 0, run.stderr.decode()
        assert_complete(summary(run), entries)
    finally:
        pool.stop()
    assert_rsync_clean(src, dst)


def test_init_script_makes_a_user_that_can_run_a_pass(rabbitmq_server: RabbitMQServer,
                                                      tmp_path: Path) -> None:
    """deploy/rabbitmq/init.sh: a vhost, a user limited to fsclone's names, a 0600 file, and
    the URL to give the nodes, port included."""
    credentials = tmp_path / "rabbitmq_alice.conf"
    for _ in range(2):  # and again: nothing changes
        url = run_init_script(rabbitmq_server, "alice", credentials)
    assert url.endswith(f":{rabbitmq_server.port}/alice") and "amqp://alice@" in url, url
    assert len(credentials.read_text().strip()) >= 24
    assert_pass_runs_as(rabbitmq_server, "alice", credentials, tmp_path)


def test_definitions_load_and_serve_a_pass(rabbitmq_server: RabbitMQServer,
                                           tmp_path: Path) -> None:
    """deploy/rabbitmq/definitions.json, loaded as deploy/README.md says (import_definitions,
    then init.sh for the password), holds what a pass needs: init.sh changes no permission."""
    definitions = json.loads((DEPLOY_RABBITMQ / "definitions.json").read_text())
    user = definitions["users"][0]["name"]
    rabbitmq_server.ctl("import_definitions", str(DEPLOY_RABBITMQ / "definitions.json"))
    exchanges = rabbitmq_server.ctl("-q", "list_exchanges", "-p", user, "name", "type",
                                    "durable")
    assert "fsclone.control\tfanout\ttrue" in exchanges.splitlines(), exchanges
    loaded = rabbitmq_server.ctl("-q", "list_permissions", "-p", user)
    run_init_script(rabbitmq_server, user, tmp_path / f"rabbitmq_{user}.conf")
    assert rabbitmq_server.ctl("-q", "list_permissions", "-p", user) == loaded
    assert_pass_runs_as(rabbitmq_server, user, tmp_path / f"rabbitmq_{user}.conf", tmp_path)


# -- hostile messages -----------------------------------------------------------------------
# A broker account can publish whatever it likes to a pass's queues and to the control
# exchange, and the workers run as root. Whatever it says, nothing outside DST changes (a
# canary tree beside the roots, compared before and after), nothing in DST is removed, and
# each forged message is dead-lettered and listed, or ignored and logged.


@dataclass
class Roots:
    src: Path
    dst: Path
    outside: Path  # root-only files beside the roots: the canary

    @property
    def allowed(self) -> str:
        """These roots as the workers' ALLOWED_ROOTS."""
        return f"{self.src}:{self.dst}"


def hostile_roots(tmp_path: Path) -> Roots:
    """SRC with a file and a directory, DST a copy of it plus an entry SRC lacks, and the
    canary."""
    roots = Roots(tmp_path / "src", tmp_path / "dst", tmp_path / "outside")
    (roots.src / "d").mkdir(parents=True)
    (roots.src / "f").write_bytes(b"source bytes " * 100)
    (roots.src / "d" / "inner").write_bytes(b"inner")
    local = fsclone("pass", "copy", roots.src, roots.dst, state=tmp_path / "local-state")
    assert local.returncode == 0, local.stderr.decode()
    (roots.dst / "extra").write_bytes(b"only in the target")
    roots.outside.mkdir()
    for name in ("victim", "x"):
        private_file(roots.outside / name, f"root's own {name}")
    return roots


def forged(op: str, path: str, names: list[str] | None, args: dict[str, Any]) -> bytes:
    """A work message of one chunk, as a broker account would write it."""
    return json.dumps([{"id": secrets.token_hex(16), "op": op, "path": path, "names": names,
                        "args": args, "group": None, "attempt": 0}]).encode()


def identity(path: Path) -> dict[str, Any]:
    """What a ``range`` or ``finalize`` chunk says about the source file it is for."""
    st = path.stat()
    return {"ino": st.st_ino, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "ctime_ns": st.st_ctime_ns, "sparse": False}


#: trial → (op, path, names, args of the forged chunk) and what its refusal says
FORGERIES: dict[str, tuple[Any, str]] = {
    "finalize with an absolute tmp": (lambda r: (
        "finalize", "", ["f"], {"tmp": str(r.outside / "victim"), "ino": 1, "size": 1,
                                "mtime_ns": 1, "ctime_ns": 1, "sparse": False}),
        "bad tmp in a finalize chunk"),
    "range with an absolute tmp": (lambda r: (
        "range", "", ["f"], {"tmp": str(r.outside / "victim"), **identity(r.src / "f"),
                             "start": 0, "end": 100}),
        "bad tmp in a range chunk"),
    "finalize of ../outside/x with a matching identity": (lambda r: (
        "finalize", "", ["f"], {"tmp": "../outside/x", **identity(r.src / "f")}),
        "bad tmp in a finalize chunk"),
    "unlink with no plan": (lambda r: ("unlink", "", ["extra"], {}),
                            "unlink chunk without the coordinator's signature"),
    "prune with no plan": (lambda r: ("prune", "d", None, {}),
                           "prune chunk without the coordinator's signature"),
}


@pytest.mark.parametrize("trial", list(FORGERIES))
def test_forged_chunks_change_nothing_outside_the_target_and_are_listed(
        broker: Broker, workers: Workers, tmp_path: Path, trial: str) -> None:
    roots = hostile_roots(tmp_path)
    canary, target = snapshot(roots.outside), snapshot(roots.dst, atime=False)
    # a pass this small can end before the worker refuses the forgery queued behind its root
    # chunk (then it is left in the dead-letter queue, not listed): 10 entries a second keep
    # it running past that
    coordinator, queues = _waiting_pass(broker, roots.src, roots.dst, tmp_path / "state",
                                        "--max-rate", "10")
    make, refusal = FORGERIES[trial]
    ch = broker.channel()
    ch.basic_publish("", queues.chunks, forged(*make(roots)),
                     pika.BasicProperties(delivery_mode=2))
    ch.connection.close()
    worker = workers.start(1, allowed=roots.allowed)
    out = coordinator.communicate(timeout=300)
    assert tree_diffs(canary, snapshot(roots.outside)) == []
    # the pass gives the target root its source times back ("extra" moved them)
    assert tree_diffs(target, snapshot(roots.dst, atime=False), ignore_root_times=True) == []
    assert coordinator.returncode == 1, out[1].decode()
    errors = summary(out)["errors"]
    assert any(refusal in e["message"] and "dead-lettered" in e["message"] for e in errors), \
        errors
    assert "malformed or refused work message moved to " + queues.dead in workers.log(worker)


def test_a_forged_announcement_starts_no_pass(broker: Broker, workers: Workers,
                                              tmp_path: Path) -> None:
    """An announcement a broker account made up, with roots of its choice and a chunk queue
    of its own, makes a root worker copy nothing, though this node's ALLOWED_ROOTS would hold
    those roots: it is not signed with the site's key. The worker says so once."""
    evil, outside = tmp_path / "evil", tmp_path / "outside"
    evil.mkdir()
    (evil / "payload").write_bytes(b"the attacker's")
    outside.mkdir()
    private_file(outside / "victim", "root's own")
    canary = snapshot(outside)
    worker = workers.start(1, allowed=f"{tmp_path}:{tmp_path}")
    ch = broker.channel()
    ch.exchange_declare("fsclone.control", "fanout", durable=True)

    def announce(pass_id: str) -> None:
        spec = PassSpec(id=pass_id, op="copy", src=str(evil), dst=str(outside),
                        started=time.time())
        ch.queue_declare(Queues.of(pass_id).chunks, durable=True)
        ch.basic_publish("", Queues.of(pass_id).chunks, forged("copy", "", None, {}))
        ch.basic_publish("fsclone.control", "",
                         json.dumps({"event": "active", "spec": spec.to_wire()}).encode())

    first, second = new_pass_id("copy"), new_pass_id("copy")

    def ignored(pass_id: str) -> bool:
        announce(pass_id)
        return (outside / "payload").exists() or \
            f"ignored an announcement: announcement of pass {pass_id}" in workers.log(worker)

    wait_for(lambda: ignored(first), 60, "the worker to hear the announcement", poll=0.5)
    for _ in range(3):
        announce(first)
    wait_for(lambda: ignored(second), 60, "the worker to hear the next one", poll=0.5)
    ch.connection.close()
    assert tree_diffs(canary, snapshot(outside)) == []
    assert workers.log(worker).count(f"announcement of pass {first}") == 1


@pytest.mark.parametrize("allowed", ["", "other roots"])
def test_a_worker_serves_no_pass_its_node_does_not_allow(broker: Broker, workers: Workers,
                                                         tmp_path: Path, allowed: str) -> None:
    """A real pass, signed, whose roots this node's ALLOWED_ROOTS does not hold (or none, the
    default): one line says why the worker ignores it, and it writes nothing."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    bulk_tree(src, dirs=2, files=2)
    other = tmp_path / "other"
    coordinator, _ = _waiting_pass(broker, src, dst, tmp_path / "state")
    worker = workers.start(1, allowed=f"{other}:{other}" if allowed else "")
    why = "its roots are not below any pair of ALLOWED_ROOTS" if allowed else \
        "ALLOWED_ROOTS is empty on this node"

    def ignoring() -> list[str]:
        return [line for line in workers.log(worker).splitlines() if "ignoring pass" in line]

    wait_for(lambda: ignoring() or (dst / "g0").exists(), 60, "the worker to hear the pass")
    coordinator.terminate()
    coordinator.wait(60)
    assert not (dst / "g0").exists()
    lines = ignoring()
    assert len(lines) == 1 and why in lines[0], lines


def test_a_forged_result_is_dropped_and_listed(broker: Broker, workers: Workers,
                                               tmp_path: Path) -> None:
    """A result for the pass's real root chunk, read off its queue, that claims the whole
    tree done: without a worker's signature it is not taken, so the tree is still copied."""
    src, dst, state = tmp_path / "src", tmp_path / "dst", tmp_path / "state"
    entries = bulk_tree(src, dirs=3, files=2)
    coordinator, queues = _waiting_pass(broker, src, dst, state)
    ch = broker.channel()
    # basic_get answers (None, None, None) while the queue is empty: a tuple, so truthy
    method, _, body = wait_for(lambda: (got := ch.basic_get(queues.chunks))[0] and got, 30,
                               "the root chunk")
    root = decode_chunks(body)[0]
    ch.basic_nack(method.delivery_tag, requeue=True)
    ch.basic_publish("", queues.results, encode_results([Result(chunk=root, worker="x.0")]),
                     pika.BasicProperties(delivery_mode=2))
    ch.connection.close()
    workers.start(1)
    out = coordinator.communicate(timeout=300)
    assert coordinator.returncode == 1, out[1].decode()
    result = summary(out)
    assert result["counters"]["scanned"] == entries
    assert [e["message"].split(";")[0] for e in result["errors"]] == [
        "a result message without a worker's signature was dropped"]
    assert_rsync_clean(src, dst)
