"""A real single-node Slurm for tests: munged with a private key, slurmctld and slurmd on
loopback ports, this machine as its one node with its real CPU layout, everything (config,
state, spool, logs, munge socket) in one temporary directory.

The daemons run in a UTS namespace of their own named ``localhost`` (see SlurmDaemon), and
the cluster names its one node and controller so.

Jobs run as the test's user (root in CI) and see the test's environment (``sbatch`` exports
it), so SLURM_CONF reaches every client command a job runs. Skipped on a machine without
Slurm or when not root, failed instead under CI (see tests.services.skip_or_fail).
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.services import LOOPBACK, Server, free_ports, require, skip_or_fail, wait_for

#: how long a job gets to end once cancelled before Slurm kills it (KillWait)
KILL_WAIT = 30
#: the node layout fields of `slurmd -C` kept in slurm.conf (RealMemory is left out: a
#: figure above what slurmd measures later would drain the node)
_LAYOUT = ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore")


class Munge(Server):
    """munged on a socket of its own, with a fresh key: only this cluster's daemons and
    clients can authenticate with it."""

    name = "munged"
    program = "munged"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir, 0)
        self.socket = workdir / "munge.socket"
        self.key = workdir / "munge.key"
        self.key.write_bytes(secrets.token_bytes(1024))
        self.key.chmod(0o400)  # munged refuses a key others can read
        self._munge = require("munge")

    def command(self) -> list[str]:
        # --force: the socket's directory is a private temp dir, not world-searchable
        return [self.executable, "--foreground", "--force", f"--socket={self.socket}",
                f"--key-file={self.key}", f"--pid-file={self.workdir / 'munged.pid'}",
                f"--seed-file={self.workdir / 'munged.seed'}",
                f"--log-file={self.workdir / 'munged.log'}"]

    def is_ready(self) -> bool:
        return subprocess.run([self._munge, "-n", "-S", str(self.socket)],
                              capture_output=True, check=False).returncode == 0


#: the host name of the daemons' own UTS namespace, and so of the cluster's one node
NODE = "localhost"


class SlurmDaemon(Server):
    """slurmctld or slurmd in the foreground, reading the cluster's slurm.conf, in a UTS
    namespace whose host name is NODE.

    Without binding to every interface (NoInAddrAny), slurmctld listens on, and srun opens its
    I/O ports on, the address their host name resolves to, while slurmd and the clients reach
    them at the loopback address: where /etc/hosts maps the machine's name to 127.0.1.1 (stock
    Debian), nothing answers. ``localhost`` resolves to 127.0.0.1 everywhere, and the jobs,
    with the srun they start, inherit the namespace from slurmd.
    """

    start_timeout = 60.0
    stop_timeout = 60.0

    def __init__(self, workdir: Path, port: int, conf: Path) -> None:
        super().__init__(workdir, port)
        self.conf = conf

    def command(self) -> list[str]:
        # unshare without --fork and sh's exec: the daemon keeps the PID Server signals
        return ["unshare", "--uts", "sh", "-c", f'hostname {NODE} && exec "$@"', "sh",
                self.executable, "-D", "-f", str(self.conf)]

    def environ(self) -> dict[str, str]:
        return {k: v for k, v in os.environ.items() if not k.startswith("SLURM")} | \
            {"SLURM_CONF": str(self.conf)}


class Slurmctld(SlurmDaemon):
    name = "slurmctld"
    program = "slurmctld"


class Slurmd(SlurmDaemon):
    name = "slurmd"
    program = "slurmd"


def node_layout() -> str:
    """This machine's CPU layout as slurm.conf spells it, as slurmd itself measures it."""
    probe = subprocess.run([require("slurmd"), "-C"], capture_output=True, text=True,
                           check=True).stdout
    fields = dict(re.findall(r"(\w+)=(\S+)", probe.splitlines()[0]))
    return " ".join(f"{k}={fields[k]}" for k in _LAYOUT)


class SlurmCluster:
    """One controller, one node (this machine), one partition; every daemon on loopback."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.conf = workdir / "slurm.conf"
        self.host = NODE
        for sub in ("state", "spool", "log"):
            (workdir / sub).mkdir()
        self.munge = Munge(workdir)
        ctld_port, slurmd_port = free_ports(2)
        self._write_conf(ctld_port, slurmd_port)
        self.ctld = Slurmctld(workdir, ctld_port, self.conf)
        self.slurmd = Slurmd(workdir, slurmd_port, self.conf)
        self.cpus = int(re.search(r"CPUs=(\d+)", self.conf.read_text())[1])  # type: ignore[index]

    def _write_conf(self, ctld_port: int, slurmd_port: int) -> None:
        w = self.workdir
        self.conf.write_text("\n".join([
            "ClusterName=fsclone-test",
            f"SlurmctldHost={self.host}({LOOPBACK})",
            f"SlurmctldPort={ctld_port}",
            f"SlurmdPort={slurmd_port}",
            # bind to the configured (loopback) addresses only, never to every interface
            "CommunicationParameters=NoCtldInAddrAny,NoInAddrAny",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge.socket}",
            f"StateSaveLocation={w / 'state'}",
            f"SlurmdSpoolDir={w / 'spool'}",
            f"SlurmctldPidFile={w / 'slurmctld.pid'}",
            f"SlurmdPidFile={w / 'slurmd.pid'}",
            f"SlurmctldLogFile={w / 'log/slurmctld.log'}",
            f"SlurmdLogFile={w / 'log/slurmd.log'}",
            # no cgroup plugins: they need a cgroup hierarchy of their own, which containers
            # rarely give; linuxproc still finds every process of a step to signal
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            # Debian's Open MPI has PMIx (ext3x) and neither PMI-1 nor PMI-2
            "MpiDefault=pmix",
            "SwitchType=switch/none",
            "SchedulerType=sched/builtin",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "ReturnToService=2",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "MinJobAge=3600",  # finished jobs stay visible to `scontrol show job`
            f"KillWait={KILL_WAIT}",
            f"NodeName={self.host} NodeAddr={LOOPBACK} {node_layout()} State=UNKNOWN",
            f"PartitionName=test Nodes={self.host} Default=YES MaxTime=INFINITE State=UP",
            "",
        ]))

    @property
    def env(self) -> dict[str, str]:
        """The environment for Slurm's client commands (and so for the jobs they submit)."""
        return {k: v for k, v in os.environ.items() if not k.startswith("SLURM")} | \
            {"SLURM_CONF": str(self.conf)}

    def run(self, *args: str | os.PathLike[str], timeout: float = 60,
            env: dict[str, str] | None = None) -> str:
        """A Slurm client command's stdout; raises on failure."""
        proc = subprocess.run([os.fspath(a) for a in args], env=env or self.env,
                              capture_output=True, text=True, timeout=timeout, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(map(str, args))} failed ({proc.returncode}):\n"
                               f"{proc.stderr}{proc.stdout}")
        return proc.stdout

    def node_state(self) -> str:
        return self.run("sinfo", "--noheader", "--Node", "--format=%T").strip()

    def start(self) -> None:
        self.munge.start()
        self.ctld.start()
        self.slurmd.start()
        wait_for(lambda: self.node_state() == "idle", 60, f"node {self.host} idle in sinfo",
                 poll=0.5)

    def stop(self) -> None:
        """Cancel every job (their steps outlive slurmd), then stop the daemons."""
        if self.ctld.running:
            subprocess.run(["scancel", "--full", "--user", str(os.getuid())], env=self.env,
                           capture_output=True, check=False)
            wait_for(lambda: not self.run("squeue", "--noheader").strip(), KILL_WAIT + 30,
                     "every job to end", poll=0.5)
        self.slurmd.stop()
        self.ctld.stop()
        self.munge.stop()

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job` as a dict: JobState, ExitCode ("0:0"), StdOut, ..."""
        line = self.run("scontrol", "show", "job", "--oneliner", job_id)
        return dict(re.findall(r"(\w+)=(\S*)", line))

    def wait_job(self, job_id: str, timeout: float = 300) -> dict[str, str]:
        """The job's record once it has ended (completed, failed, cancelled, timed out)."""
        def ended() -> dict[str, str] | None:
            record = self.job(job_id)
            return record if record["JobState"] not in ("PENDING", "RUNNING", "CONFIGURING",
                                                        "COMPLETING") else None
        return wait_for(ended, timeout, f"job {job_id} to end", poll=0.5)


@pytest.fixture(scope="session")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    for tool in ("sbatch", "srun", "sinfo", "scancel", "scontrol", "squeue"):
        require(tool)
    if os.geteuid() != 0:
        skip_or_fail("the test cluster's slurmd runs jobs as root")
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
