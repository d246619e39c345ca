"""Real servers for tests: memcached, RabbitMQ, carbon-cache, graphite-web and mpirun, on
loopback only.

Each server is a child of the test session, with its own temporary directory and free ports,
so concurrent sessions never share state. Fixtures are session-scoped because RabbitMQ takes
seconds to boot; every server is stopped when the session ends. A test that stops or kills a
server must start it again (start() is a no-op on a running server), best in a `finally`.

A missing server binary skips the test on a developer machine but fails it when ``CI`` is set,
so CI can never go green by silently skipping the integration tests.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import random
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn, Self, TypeVar
from urllib.parse import quote, urlencode

import pika
import pika.exceptions
import pytest
import whisper

T = TypeVar("T")

LOOPBACK = "127.0.0.1"
RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")
"""Debian's /usr/sbin/rabbitmq* wrappers `su` to the rabbitmq user when run as root; these
scripts run as the caller, so the node can use our temp dir and HOME."""

_PR_SET_PDEATHSIG = 1
_prctl = ctypes.CDLL(None, use_errno=True).prctl


def _die_with_parent() -> None:
    """Run in the child before exec: SIGKILL it if the test session dies without teardown."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def skip_or_fail(reason: str) -> NoReturn:
    """Skip on a laptop without the server; fail under CI, where the server must exist."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (required because CI is set)")
    pytest.skip(reason)


def require(tool: str) -> str:
    """Return the path of executable `tool` (name or absolute path), else skip_or_fail."""
    path = shutil.which(tool)
    if path is None:
        skip_or_fail(f"{tool} is not installed")
    return path


def wait_for(probe: Callable[[], T | None], timeout: float, what: str, poll: float = 0.1) -> T:
    """Poll `probe` every `poll` s until it returns a truthy value, or raise TimeoutError after
    `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(poll)


def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports, all below the kernel's ephemeral range.

    Servers are restarted on the same port; a kernel-chosen (ephemeral) port may meanwhile be
    taken as the source port of any outgoing connection on the host, and the restart then fails
    with EADDRINUSE. Candidates stay bound while choosing, so none repeats.
    """
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports: list[int] = []
    with contextlib.ExitStack() as stack:
        while len(ports) < count:
            sock = stack.enter_context(socket.socket())
            port = random.randrange(10000, low)
            try:
                sock.bind((LOOPBACK, port))
            except OSError:
                continue
            ports.append(port)
    return ports


def free_port() -> int:
    """A free loopback TCP port (racy by nature: bind it soon)."""
    return free_ports(1)[0]


def accepts(host: str, port: int) -> bool:
    """Whether something accepts TCP connections on host:port right now."""
    try:
        socket.create_connection((host, port), timeout=1).close()
    except OSError:
        return False
    return True


def _clean_env(*prefixes: str) -> dict[str, str]:
    """os.environ without variables whose names start with `prefixes` (user's own settings)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}


class Server:
    """A loopback server run as a child process, restartable on the same port and state."""

    name = "server"
    program = ""
    start_timeout = 30.0
    stop_timeout = 30.0

    def __init__(self, workdir: Path, port: int) -> None:
        self.host = LOOPBACK
        self.port = port
        self.workdir = workdir
        self.log_path = workdir / f"{self.name}.out"
        self.executable = require(self.program)
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def command(self) -> list[str]:
        raise NotImplementedError

    def environ(self) -> dict[str, str]:
        return dict(os.environ)

    def is_ready(self) -> bool:
        return accepts(self.host, self.port)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start the process and return once it serves, or kill it and raise; no-op if running."""
        if self.running:
            return
        with open(self.log_path, "ab") as log:
            # Own session: a terminal ^C reaches pytest, whose teardown then stops us in order.
            self._proc = subprocess.Popen(
                self.command(),
                env=self.environ(),
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        try:
            wait_for(self._ready_or_dead, self.start_timeout, f"{self.name} on port {self.port}")
        except BaseException:
            self.kill()
            raise

    def _ready_or_dead(self) -> bool:
        assert self._proc is not None
        if self._proc.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited with {self._proc.returncode}:\n{self.log_tail()}"
            )
        return self.is_ready()

    def stop(self) -> None:
        """Graceful stop (SIGTERM), escalating to SIGKILL after stop_timeout."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def kill(self) -> None:
        """SIGKILL: simulates a crash; no chance to flush anything."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


class MemcachedServer(Server):
    name = "memcached"
    program = "memcached"

    def command(self) -> list[str]:
        # -U 0: no UDP listener; -u root: memcached refuses to run as root without it.
        return [self.executable, "-l", self.host, "-p", str(self.port), "-U", "0", "-u", "root"]


class _Epmd(Server):
    """A private Erlang port mapper, so our node names and ports never meet another session's."""

    name = "epmd"
    program = "epmd"

    def command(self) -> list[str]:
        return [self.executable, "-port", str(self.port), "-address", self.host]


class RabbitMQServer(Server):
    """A RabbitMQ node of our own; restarts keep its node name and mnesia dir, hence its data.

    The vhost, user and password are created by the node at its first boot (default_* config),
    which costs nothing compared to rabbitmqctl calls (~1 s each).
    """

    name = "rabbitmq"
    program = str(RABBITMQ_BIN / "rabbitmq-server")
    start_timeout = 60.0
    stop_timeout = 60.0

    def __init__(self, workdir: Path) -> None:
        port, self.dist_port, epmd_port = free_ports(3)
        super().__init__(workdir, port)
        self.nodename = f"fsclone-test-{os.getpid()}-{secrets.token_hex(3)}@localhost"
        self.vhost = "fsclone"
        self.user = "fsclone"
        self.password = secrets.token_urlsafe(16)
        self._epmd = _Epmd(workdir, epmd_port)
        self._ctl = require(str(RABBITMQ_BIN / "rabbitmqctl"))
        (workdir / "rabbitmq.conf").write_text(
            f"default_vhost = {self.vhost}\n"
            f"default_user = {self.user}\n"
            f"default_pass = {self.password}\n"
            "default_user_tags.administrator = true\n"
            "default_permissions.configure = .*\n"
            "default_permissions.read = .*\n"
            "default_permissions.write = .*\n"
            "log.console = false\n"
            "log.file.level = info\n"
        )
        (workdir / "enabled_plugins").write_text("[].\n")
        cookie = workdir / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(16))
        cookie.chmod(0o400)  # Erlang refuses a cookie readable by others.

    def command(self) -> list[str]:
        return [self.executable]

    def environ(self) -> dict[str, str]:
        # Drop the user's RABBITMQ_*/ERL_* settings; point every path at our temp dir so
        # nothing from /etc/rabbitmq or /var/lib/rabbitmq is read.
        loopback_dist = "-kernel inet_dist_use_interface {127,0,0,1}"
        return _clean_env("RABBITMQ_", "ERL_") | {
            "HOME": str(self.workdir),
            "ERL_EPMD_ADDRESS": self.host,
            "ERL_EPMD_PORT": str(self._epmd.port),
            "RABBITMQ_NODENAME": self.nodename,
            "RABBITMQ_NODE_IP_ADDRESS": self.host,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.workdir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.workdir / "log"),
            "RABBITMQ_CONFIG_FILE": str(self.workdir / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.workdir / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(self.workdir / "rabbitmq-env.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.workdir / "enabled_plugins"),
            # Makes the script exec the VM instead of running it as a background job of a
            # signal-forwarding shell, so our pid is the broker's: kill() really kills it.
            "RUNNING_UNDER_SYSTEMD": "true",
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": f"{loopback_dist} -start_epmd false",
            # rabbitmqctl's own node: ephemeral loopback port instead of the shared 35672-35682.
            "RABBITMQ_CTL_ERL_ARGS": loopback_dist,
            "RABBITMQ_CTL_DIST_PORT_MIN": "0",
            "RABBITMQ_CTL_DIST_PORT_MAX": "0",
        }

    def is_ready(self) -> bool:
        """Ready once our user can open a connection to our vhost (listeners start last)."""
        params = pika.URLParameters(self.url() + "?connection_attempts=1&socket_timeout=2")
        try:
            pika.BlockingConnection(params).close()
        except pika.exceptions.AMQPError:
            return False
        return True

    def url(
        self, user: str | None = None, password: str | None = None, vhost: str | None = None
    ) -> str:
        """AMQP URL for pika.URLParameters; defaults to the fixture's own user and vhost."""
        user = self.user if user is None else user
        password = self.password if password is None else password
        vhost = self.vhost if vhost is None else vhost
        creds = f"{quote(user, safe='')}:{quote(password, safe='')}"
        return f"amqp://{creds}@{self.host}:{self.port}/{quote(vhost, safe='')}"

    def ctl(self, *args: str) -> str:
        """Run rabbitmqctl against this node and return its stdout; raise on failure."""
        proc = subprocess.run(
            [self._ctl, "-n", self.nodename, *args],
            env=self.environ(),
            cwd=self.workdir,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=self.start_timeout,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed:\n{proc.stderr}{proc.stdout}")
        return proc.stdout

    def start(self) -> None:
        self._epmd.start()  # no-op after kill(), which leaves epmd running
        super().start()

    def stop(self) -> None:
        """Graceful broker shutdown (SIGTERM), then its epmd."""
        super().stop()
        self._epmd.stop()


class CarbonServer(Server):
    """carbon-cache writing whisper files with 1 s resolution for one hour (1s:1h).

    1 s slots mean each point a test sends lands in its own slot (10 s would merge them), and
    carbon's writer drains its cache about every second, so points are on disk within ~2 s.
    """

    name = "carbon"
    program = "carbon-cache"

    def __init__(self, workdir: Path) -> None:
        port, self.pickle_port, self.query_port = free_ports(3)
        super().__init__(workdir, port)
        self.whisper_dir = workdir / "storage" / "whisper"
        self._conf = workdir / "carbon.conf"
        self._conf.write_text(
            "[cache]\n"
            f"STORAGE_DIR = {workdir / 'storage'}\n"
            f"LOCAL_DATA_DIR = {self.whisper_dir}\n"
            f"LOG_DIR = {workdir / 'log'}\n"
            f"PID_DIR = {workdir}\n"
            "USER =\n"
            "MAX_CACHE_SIZE = inf\n"
            "MAX_UPDATES_PER_SECOND = inf\n"
            "MAX_CREATES_PER_MINUTE = inf\n"
            "CACHE_WRITE_STRATEGY = naive\n"
            f"LINE_RECEIVER_INTERFACE = {self.host}\n"
            f"LINE_RECEIVER_PORT = {self.port}\n"
            f"PICKLE_RECEIVER_INTERFACE = {self.host}\n"
            f"PICKLE_RECEIVER_PORT = {self.pickle_port}\n"
            f"CACHE_QUERY_INTERFACE = {self.host}\n"
            f"CACHE_QUERY_PORT = {self.query_port}\n"
            "ENABLE_UDP_LISTENER = False\n"
            "CARBON_METRIC_INTERVAL = 0\n"  # no carbon.agents.* self-metrics in whisper_dir
            "LOG_LISTENER_CONN_SUCCESS = False\n"
        )
        # carbon reads storage-schemas.conf from the directory holding carbon.conf.
        (workdir / "storage-schemas.conf").write_text(
            "[everything]\npattern = .*\nretentions = 1s:1h\n"
        )

    def command(self) -> list[str]:
        return [self.executable, f"--config={self._conf}", "--nodaemon", "start"]

    def environ(self) -> dict[str, str]:
        # carbon-cache runs on Debian's /usr/bin/python3; keep our interpreter's paths away.
        return _clean_env("PYTHON", "GRAPHITE_")

    def series_path(self, metric_path: str) -> Path:
        return self.whisper_dir.joinpath(*metric_path.split(".")).with_suffix(".wsp")

    def read_series(self, metric_path: str) -> list[tuple[int, float]]:
        """Points of `metric_path` on disk, oldest first; [] if carbon has not created it."""
        try:
            (start, end, step), values = whisper.fetch(str(self.series_path(metric_path)), 0)
        except FileNotFoundError:
            return []
        return [
            (ts, v) for ts, v in zip(range(start, end, step), values, strict=True) if v is not None
        ]

    def wait_series(
        self,
        metric_path: str,
        predicate: Callable[[list[tuple[int, float]]], bool],
        deadline: float = 30.0,
    ) -> list[tuple[int, float]]:
        """Poll read_series until `predicate(points)` holds; `deadline` is in seconds."""

        def probe() -> list[tuple[int, float]] | None:
            try:
                points = self.read_series(metric_path)
            except (whisper.CorruptWhisperFile, struct.error):
                return None  # carbon is still creating the file
            return points if predicate(points) else None

        try:
            return wait_for(probe, deadline, f"whisper series {metric_path}")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; last read: {self.read_series(metric_path)}") from None


def grafana_expand(expression: str, values: dict[str, str]) -> str:
    """A dashboard's target or variable query as Grafana sends it: each ``$name`` replaced by
    its value (a multi-value variable at "All" by its allValue, e.g. ``*``)."""
    for name in sorted(values, key=len, reverse=True):  # $op before a $opt, were there one
        expression = expression.replace(f"${name}", values[name])
    if "$" in expression:
        raise ValueError(f"a variable of {expression!r} has no value")
    return expression


class GraphiteWebServer(Server):
    """Debian's graphite-web (Django's server, on Debian's python3) reading a CarbonServer's
    whisper files, and its cache for points not yet written: what Grafana's Graphite data
    source asks, ``/render`` and ``/metrics/find``, answered as a site's graphite-web would."""

    name = "graphite-web"
    program = "graphite-manage"

    def __init__(self, workdir: Path, carbon: CarbonServer) -> None:
        super().__init__(workdir, free_port())
        storage = workdir / "storage"
        (storage / "log").mkdir(parents=True)
        # graphite.settings imports the module GRAPHITE_SETTINGS_MODULE names over its defaults
        (workdir / "fsclone_test_graphite.py").write_text(
            f"SECRET_KEY = {secrets.token_hex(16)!r}\n"
            f"STORAGE_DIR = {str(storage)!r}\n"
            f"LOG_DIR = {str(storage / 'log')!r}\n"
            f"INDEX_FILE = {str(storage / 'index')!r}\n"
            f"WHISPER_DIR = {str(carbon.whisper_dir)!r}\n"
            f"STANDARD_DIRS = [WHISPER_DIR]\n"
            f"CARBONLINK_HOSTS = ['{carbon.host}:{carbon.query_port}:a']\n"
            f"ALLOWED_HOSTS = [{self.host!r}]\n"
            "DEFAULT_XFILES_FACTOR = 0\n"
            "LOG_ROTATION = False\n"
            "DATABASES = {'default': {'ENGINE': 'django.db.backends.sqlite3',\n"
            f"                         'NAME': {str(storage / 'graphite.db')!r}}}}}\n"
        )

    def command(self) -> list[str]:
        return [self.executable, "runserver", "--noreload", f"{self.host}:{self.port}"]

    def start(self) -> None:
        """Make graphite-web's own database first (its users and sessions: even an anonymous
        /render reads them), once: restarts keep it."""
        if not (self.workdir / "storage" / "graphite.db").exists():
            subprocess.run([self.executable, "migrate", "--no-input", "-v", "0"],
                           env=self.environ(), cwd=self.workdir, stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=self.start_timeout, check=True)
        super().start()

    def environ(self) -> dict[str, str]:
        # graphite-web runs on Debian's /usr/bin/python3: our interpreter's paths stay away
        return _clean_env("PYTHON", "GRAPHITE_", "DJANGO_") | {
            "PYTHONPATH": str(self.workdir),
            "GRAPHITE_SETTINGS_MODULE": "fsclone_test_graphite",
        }

    def get(self, path: str, *pairs: tuple[str, str], **query: str) -> bytes:
        """The body of a GET of ``path`` with the query ``pairs`` (a name may repeat: several
        ``target``) and ``query``; raise on an HTTP error."""
        url = f"http://{self.host}:{self.port}{path}?{urlencode([*pairs, *query.items()])}"
        with urllib.request.urlopen(url, timeout=30) as reply:
            body: bytes = reply.read()
        return body

    def render(self, target: str, since: str = "-1h") -> list[dict[str, Any]]:
        """``/render?format=json`` of one target: its series, each with its ``datapoints``
        ([value or None, time], oldest first)."""
        series: list[dict[str, Any]] = json.loads(
            self.get("/render", target=target, format="json", **{"from": since}))
        return series

    def find(self, query: str) -> list[str]:
        """The nodes ``/metrics/find`` lists for a query (what a template variable offers)."""
        nodes: list[dict[str, str]] = json.loads(self.get("/metrics/find", query=query))
        return [node["text"] for node in nodes]


def mpirun_cmd(n: int) -> list[str]:
    """mpirun prefix for `n` local ranks that works as root in a container with few cores.

    --allow-run-as-root: CI runs as root. --oversubscribe: more ranks than cores.
    --bind-to none: core binding fails under restricted cpusets. btl self,tcp on lo with pml
    ob1: shared-memory single-copy (CMA/ptrace) is often forbidden in containers, and
    loopback keeps MPI off the real network.
    """
    # fmt: off
    return [
        "mpirun", "--allow-run-as-root", "--oversubscribe", "--bind-to", "none",
        "--mca", "pml", "ob1", "--mca", "btl", "self,tcp",
        "--mca", "btl_tcp_if_include", "lo", "--mca", "oob_tcp_if_include", "lo",
        "-n", str(n),
    ]
    # fmt: on


@pytest.fixture(scope="session")
def memcached_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MemcachedServer]:
    server = MemcachedServer(tmp_path_factory.mktemp("memcached"), free_port())
    with server:
        yield server


@pytest.fixture(scope="session")
def rabbitmq_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitMQServer]:
    server = RabbitMQServer(tmp_path_factory.mktemp("rabbitmq"))
    with server:
        yield server


@pytest.fixture(scope="session")
def carbon_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CarbonServer]:
    server = CarbonServer(tmp_path_factory.mktemp("carbon"))
    with server:
        yield server


@pytest.fixture(scope="session")
def graphite_web(tmp_path_factory: pytest.TempPathFactory,
                 carbon_server: CarbonServer) -> Iterator[GraphiteWebServer]:
    server = GraphiteWebServer(tmp_path_factory.mktemp("graphite-web"), carbon_server)
    with server:
        yield server


@pytest.fixture(scope="session")
def require_mpi() -> Callable[[int], list[str]]:
    """Ensure mpirun and mpi4py exist; returns mpirun_cmd for convenience."""
    require("mpirun")
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        skip_or_fail(f"mpi4py is not importable by {sys.executable}")
    return mpirun_cmd
