"""Passes as MPI jobs under a real ``mpirun``: rank 0 coordinates, the other ranks work.

Each test runs ``mpirun -n N python -m fsclone pass ...`` exactly as a batch script would, so
launch, rank detection, the spec hand-out, chunk traffic, stop and exit codes are all real.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from fsclone.engine.worker import worker_name
from fsclone.lifecycle import INTERRUPTED, RUNNING
from fsclone.state.queries import list_passes, read_workers
from fsclone.transport.mpi import in_mpi_job, launcher_size
from tests.clirun import PathLike, descendants, fsclone_env
from tests.fstree import assert_rsync_clean, assert_same_tree, build_hostile_tree, snapshot
from tests.midpass import held, many_files
from tests.mounts import read_only
from tests.services import RabbitMQServer, wait_for

#: real mpirun jobs on trees that need root (chown, mknod, chattr)
job = pytest.mark.service(pytest.mark.skipif(os.geteuid() != 0, reason="needs root"))

MpiRun = Callable[[int], list[str]]
SLURM = Path(__file__).resolve().parent.parent / "deploy" / "slurm"
RANKS = 3  # rank 0 coordinates, two ranks work


def command(mpirun: MpiRun, *args: PathLike, ranks: int = RANKS) -> list[bytes]:
    return [os.fsencode(a) for a in (*mpirun(ranks), sys.executable, "-m", "fsclone", *args)]


def run(mpirun: MpiRun, *args: PathLike, state: Path,
        ranks: int = RANKS) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(command(mpirun, *args, ranks=ranks), env=fsclone_env(state),
                          capture_output=True, timeout=300, check=False)


def summary(proc: subprocess.CompletedProcess[bytes]) -> dict[str, object]:
    """The --json summary, which must be all of stdout: only rank 0 prints."""
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, proc.stdout.decode(errors="replace") + proc.stderr.decode()
    result: dict[str, object] = json.loads(lines[0])
    return result


@job
def test_copy_under_mpirun_is_faithful_and_counts_as_local(require_mpi: MpiRun,
                                                          tmp_path: Path) -> None:
    src, state = tmp_path / "src", tmp_path / "state"
    src.mkdir()
    build_hostile_tree(src)
    proc = run(require_mpi, "pass", "copy", "--json", src, tmp_path / "dst", state=state)
    assert proc.returncode == 0, proc.stderr.decode()
    out = summary(proc)
    assert_same_tree(src, tmp_path / "dst")
    assert_rsync_clean(src, tmp_path / "dst")

    local = subprocess.run(
        [sys.executable, "-m", "fsclone", "pass", "copy", "--json", "--workers", "2",
         src, tmp_path / "local"], env=fsclone_env(state), capture_output=True, check=False)
    assert local.returncode == 0, local.stderr.decode()
    assert out["counters"] == summary(local)["counters"]
    counters = out["counters"]
    assert isinstance(counters, dict)
    assert counters["scanned"] == len(snapshot(src, atime=False)) - 1  # all but the root
    assert "errors" not in counters and out["error_count"] == 0
    assert ranks_that_worked(state, out) == {1, 2}  # rank 0 only coordinates


@job
def test_an_inode_two_ranks_race_to_copy_counts_once(require_mpi: MpiRun, tmp_path: Path) -> None:
    """d0/base and its links in d1..d8 are met at once by both working ranks: both copy the
    data, one publishes it, the other links to it and drops its copy, whose bytes must not
    count (they did, once: bytes copied depended on the race)."""
    src = tmp_path / "src"
    (src / "d0").mkdir(parents=True)
    (src / "d0/base").write_bytes(os.urandom(1 << 20) * 8)
    for d in range(1, 9):
        (src / f"d{d}").mkdir()
        os.link(src / "d0/base", src / f"d{d}/link")
    proc = run(require_mpi, "pass", "copy", "--json", src, tmp_path / "dst",
               state=tmp_path / "state")
    assert proc.returncode == 0, proc.stderr.decode()
    counters = summary(proc)["counters"]
    assert isinstance(counters, dict)
    assert (counters["files_copied"], counters["bytes_copied"]) == (1, 8 << 20)
    assert_rsync_clean(src, tmp_path / "dst")


@job
def test_item_error_exits_1_on_every_rank(require_mpi: MpiRun, tmp_path: Path) -> None:
    src, dst, state = many_files(tmp_path / "src", dirs=2, files=3), tmp_path / "dst", \
        tmp_path / "state"
    (dst / "d001").mkdir(parents=True)
    with read_only(dst / "d001"):
        proc = run(require_mpi, "pass", "copy", "--json", src, dst, state=state)
    assert proc.returncode == 1, proc.stderr.decode()
    out = summary(proc)
    assert out["error_count"] == 4  # 3 files, the directory's times
    assert (dst / "d000/f002").exists()  # the rest of the pass went on


@job
@pytest.mark.parametrize("how", ["walltime", "crash"])
def test_job_killed_mid_pass_is_resumed_by_the_same_command(require_mpi: MpiRun, tmp_path: Path,
                                                            how: str) -> None:
    """The end of a job's time (Slurm sends SIGTERM to every task: rank 0 stops the pass) or a
    crash (SIGKILL to every process at once, as when a node dies): the pass record survives
    either, and the same command resumes the same pass to a faithful end."""
    src, dst = many_files(tmp_path / "src"), tmp_path / "dst"
    state = tmp_path / "state"
    args = ("pass", "copy", "--json", src, dst)
    with held(src / "d039/f059"):  # the pass cannot end before the kill
        job = subprocess.Popen(command(require_mpi, *args), env=fsclone_env(state),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            first = wait_for(lambda: next((r for r in list_passes(state)
                                           if r.counters.get("files_copied", 0) >= 60), None),
                             60, "the pass to make progress")
        finally:
            ranks = descendants(job.pid)
            for pid in [job.pid, *ranks]:
                os.kill(pid, signal.SIGTERM if how == "walltime" else signal.SIGKILL)
            job.wait(60)
    wait_for(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in ranks), 60,
             "every rank to be gone")
    killed = next(r for r in list_passes(state) if r.spec.id == first.spec.id)
    assert killed.status == (INTERRUPTED if how == "walltime" else RUNNING), killed.status
    assert killed.outstanding > 0, "the pass ended before the kill"

    proc = run(require_mpi, *args, state=state)
    assert proc.returncode == 0, proc.stderr.decode()
    assert summary(proc)["pass"] == first.spec.id  # resumed, not started anew
    assert_same_tree(src, dst)
    assert_rsync_clean(src, dst)


@job
def test_a_fatal_error_on_rank_0_ends_every_rank_with_its_code(require_mpi: MpiRun,
                                                               tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    proc = run(require_mpi, "pass", "delete", tmp_path / "src", tmp_path / "missing",
               state=tmp_path / "state")
    assert proc.returncode == 2
    assert proc.stderr.decode().splitlines()[0] == f"fsclone: target {tmp_path}/missing is missing"
    assert proc.stdout == b""


@job
def test_ctrl_c_on_rank_0_interrupts_the_pass_on_every_rank(require_mpi: MpiRun,
                                                            tmp_path: Path) -> None:
    """As srun passes on a first Ctrl-C: rank 0 stops the pass, records it as interrupted, and
    every rank exits 130."""
    src, dst, state = many_files(tmp_path / "src"), tmp_path / "dst", tmp_path / "state"
    with held(src / "d039/f059"):  # the pass cannot end before Ctrl-C
        job = subprocess.Popen(command(require_mpi, "pass", "copy", src, dst),
                               env=fsclone_env(state), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
        wait_for(lambda: any(r.counters.get("files_copied", 0) >= 60 for r in list_passes(state)),
                 60, "the pass to make progress")
        (rank0,) = [pid for pid in descendants(job.pid)
                    if b"OMPI_COMM_WORLD_RANK=0\0" in Path(f"/proc/{pid}/environ").read_bytes()]
        os.kill(rank0, signal.SIGINT)
    _, err = job.communicate(timeout=120)
    assert job.returncode == 130, err.decode()
    (interrupted,) = list_passes(state)
    assert interrupted.status == "interrupted" and interrupted.outstanding > 0


@job
def test_sigterm_to_every_rank_then_again_to_rank_0_ends_every_rank_with_130(
        require_mpi: MpiRun, tmp_path: Path) -> None:
    """Slurm's SIGTERM reaches every task: the worker ranks leave the stop to rank 0. Another
    one may reach rank 0 while it stops the pass (a second scancel): the stop still ends with
    every rank told to exit, or the job would hang until SIGKILL."""
    src, dst, state = many_files(tmp_path / "src"), tmp_path / "dst", tmp_path / "state"
    with held(src / "d039/f059") as lease:  # the rank that opens it answers STOP only later
        job = subprocess.Popen(command(require_mpi, "pass", "copy", src, dst),
                               env=fsclone_env(state), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
        wait_for(lease.breaking, 60, "a rank to open the held file")
        ranks = {pid: Path(f"/proc/{pid}/environ").read_bytes() for pid in descendants(job.pid)}
        ranks = {pid: env for pid, env in ranks.items() if b"OMPI_COMM_WORLD_RANK=" in env}
        for pid in ranks:
            os.kill(pid, signal.SIGTERM)
        (rank0,) = [pid for pid, env in ranks.items() if b"OMPI_COMM_WORLD_RANK=0\0" in env]
        wait_for(lambda: list_passes(state)[0].status == "interrupted", 60, "the stop")
        os.kill(rank0, signal.SIGTERM)
    _, err = job.communicate(timeout=120)
    assert job.returncode == 130, err.decode()
    (stopped,) = list_passes(state)
    assert [line for line in err.decode().splitlines() if line.startswith("fsclone: ")] == [
        f"fsclone: copy pass {stopped.spec.id} interrupted by SIGTERM; run the same command "
        f"again to resume (or: fsclone pass resume {stopped.spec.id})"]


@job
def test_a_rank_without_the_source_stops_the_job_in_one_line(require_mpi: MpiRun,
                                                             tmp_path: Path) -> None:
    """Rank 2 runs in a mount namespace where the source is hidden, like a node that lacks the
    mount: the job aborts, naming the rank; once fixed, the same command resumes the pass."""
    if subprocess.run(["unshare", "-m", "true"], check=False).returncode != 0:
        pytest.skip("cannot make a mount namespace here")
    hidden, dst, state = tmp_path / "hidden", tmp_path / "dst", tmp_path / "state"
    # ranks 0 and 1 alone must not finish the pass before rank 2 has started (slow on a
    # loaded machine): 100 files at 20 a second leave it some 5 s
    src = many_files(hidden / "src", dirs=4, files=25)
    program = [sys.executable, "-m", "fsclone", "pass", "copy", "--json", "--max-rate", "20",
               str(src), str(dst)]
    hide = ["unshare", "-m", "sh", "-c", 'mount -t tmpfs none "$0" && exec "$@"', str(hidden)]
    mpmd = [*require_mpi(2), *program, ":", "-n", "1", *hide, *program]  # ranks 0-1 : rank 2
    proc = subprocess.run(mpmd, env=fsclone_env(state), capture_output=True, timeout=120,
                          check=False)
    assert proc.returncode == 2
    assert f"fsclone: rank 2 ({worker_name(2)}) stops the job: [Errno 2]".encode() \
        in proc.stderr, proc.stderr.decode()
    (stopped,) = list_passes(state)
    assert stopped.status in (RUNNING, INTERRUPTED)  # killed by mpirun, or stopped by its SIGTERM

    again = run(require_mpi, "pass", "copy", "--json", src, dst, state=state)
    assert again.returncode == 0, again.stderr.decode()
    assert summary(again)["pass"] == stopped.spec.id
    assert_rsync_clean(src, dst)


@job
def test_with_a_broker_rank_0_coordinates_it_and_the_ranks_consume_it(
        require_mpi: MpiRun, rabbitmq_server: RabbitMQServer, tmp_path: Path) -> None:
    """No `fsclone worker` runs anywhere: the pass ends only if the ranks consumed the queue,
    and the job ends only if rank 0 told them to stop."""
    src, dst, state = many_files(tmp_path / "src", dirs=8, files=10), tmp_path / "dst", \
        tmp_path / "state"
    password = tmp_path / "password"
    password.write_text(rabbitmq_server.password + "\n")
    password.chmod(0o600)
    key = tmp_path / "signing.key"
    key.write_text(secrets.token_hex(32))
    key.chmod(0o600)
    s = rabbitmq_server
    proc = subprocess.run(
        command(require_mpi, "pass", "copy", "--json", src, dst),
        env=fsclone_env(state, broker=f"amqp://{s.user}@{s.host}:{s.port}/{s.vhost}",
                        password_file=password, signing_key_file=key),
        capture_output=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr.decode()
    out = summary(proc)
    assert isinstance(out["counters"], dict) and out["counters"]["files_copied"] == 80
    # rank 0 only coordinates; which ranks work is the broker's choice: up to 32 chunks go in
    # one message, and a rank that connects first can take this whole tree
    assert ranks_that_worked(state, out) in ({1}, {2}, {1, 2})
    assert_rsync_clean(src, dst)


@job
def test_the_batch_scripts_run_a_migration_with_mpirun_for_srun(require_mpi: MpiRun,
                                                                tmp_path: Path) -> None:
    """deploy/slurm's scripts with their site settings in the environment (as sbatch --export
    gives them): the copy pass leaves the files written today to the final pass, which takes
    them and deletes what SRC lost."""
    src, dst, state = many_files(tmp_path / "src", dirs=3, files=4), tmp_path / "dst", \
        tmp_path / "state"
    config = tmp_path / "config.py"
    config.write_text(f"STATE_DIR = {str(state)!r}\n")

    def sbatch(script: str, *args: str) -> subprocess.CompletedProcess[str]:
        site = {"SRC": str(src), "DST": str(dst), "CONFIG": str(config),
                "FSCLONE": f"{sys.executable} -m fsclone", "LAUNCH": " ".join(require_mpi(RANKS))}
        env = {k: v for k, v in os.environ.items() if not k.startswith("FSCLONE_")} | site
        return subprocess.run(["bash", SLURM / script, *args], env=env, capture_output=True,
                              text=True, timeout=300, check=False)

    copy = sbatch("copy-pass.sbatch")
    assert copy.returncode == 0, copy.stderr
    assert "skipped: newer than --newest" in copy.stdout and not (dst / "d000/f000").exists()
    (dst / "gone").mkdir()
    for script in ("delete-pass.sbatch", "mtime-pass.sbatch"):
        assert (done := sbatch(script, "--dry-run")).returncode == 0, done.stderr
    assert (dst / "gone").exists()
    final = sbatch("final-pass.sbatch")
    assert final.returncode == 0, final.stderr
    assert final.stdout.count(" done in ") == 2  # sync, then mtime
    assert_rsync_clean(src, dst)


def ranks_that_worked(state: Path, out: dict[str, object]) -> set[int]:
    """The ranks named in the pass's per-worker counters (workers are named host.rank)."""
    names = read_workers(state / str(out["pass"]))
    ranks = {rank for rank in range(RANKS) if worker_name(rank) in names}
    assert len(ranks) == len(names), names
    return ranks


def test_a_plain_run_never_loads_mpi(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "fsclone", "pass", "copy",
                           tmp_path / "src", tmp_path / "dst"], env=fsclone_env(tmp_path / "state"),
                          capture_output=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr.decode()
    assert b"fsclone.transport.mpi" in proc.stderr and b"mpi4py" not in proc.stderr


@pytest.mark.parametrize(("env", "expected"), [
    ({}, False),
    ({"OMPI_COMM_WORLD_SIZE": "4"}, True),
    ({"OMPI_COMM_WORLD_SIZE": "1"}, False),
    ({"PMI_SIZE": "2"}, True),
    ({"SLURM_STEP_NUM_TASKS": "8", "SLURM_PROCID": "3"}, True),
    ({"SLURM_NTASKS": "8", "SLURM_PROCID": "0"}, False),  # the batch script, not an srun task
    ({"PMIX_RANK": "0"}, True),
])
def test_mpi_job_detection(env: dict[str, str], expected: bool) -> None:
    assert in_mpi_job(env) is expected


def test_mpirun_under_slurm_counts_its_ranks_not_its_daemons() -> None:
    """mpirun in an allocation starts its daemons through srun, one per node, so its ranks can
    inherit that step's task count: the number of nodes."""
    assert launcher_size({"OMPI_COMM_WORLD_SIZE": "64", "SLURM_STEP_NUM_TASKS": "2"}) == 64
