"""The scripts of deploy/slurm, submitted with sbatch as deploy/slurm/README.md says, to a real
single-node Slurm (tests/slurm.py) whose srun starts the ranks with PMIx: each ends with a
faithful target and exit 0; a job cancelled mid-pass (SIGTERM, as at its walltime) says how to
resume, and the resubmitted job resumes; a launcher the MPI cannot use gives one line, exit 2.
"""

from __future__ import annotations

import itertools
import os
import re
import sys
import time
from pathlib import Path

import pytest

from fsclone.state.queries import list_passes
from fsclone.transport import pmi
from tests.clirun import fsclone
from tests.fstree import assert_rsync_clean, assert_same_tree, build_hostile_tree
from tests.midpass import held, many_files
from tests.services import mpirun_cmd, wait_for
from tests.slurm import KILL_WAIT, SlurmCluster

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = REPO / "deploy" / "slurm"
#: the documents that give the sizing advice
SIZING_DOCS = (SCRIPTS / "README.md", REPO / "docs" / "migration.md")
DAY = 86400
#: the advice for a metadata-bound tree as the docs write it: "`--nodes=N --ntasks=T ...` with
#: T = N x cores x 2-4"
_ADVICE = re.compile(r"`(--nodes=N [^`]*)`\s+with\s+T\s+=\s+N\s+x\s+cores\s+x\s+(\d)-(\d)")


def advice(doc: Path) -> tuple[list[str], tuple[int, int]]:
    """The sbatch options ``doc`` advises for a metadata-bound tree (N nodes, T tasks), and
    the fewest and most tasks per core it advises."""
    found = _ADVICE.findall(doc.read_text())
    assert len(found) == 1, f"{doc}: no sizing advice in the form this test reads"
    options, fewest, most = found[0]
    return options.split(), (int(fewest), int(most))


def sized(options: list[str], nodes: int, tasks: int) -> list[str]:
    """The advised ``options`` for ``nodes`` nodes and ``tasks`` tasks in all."""
    return [o.replace("=N", f"={nodes}").replace("=T", f"={tasks}") for o in options]


def submit(slurm: SlurmCluster, script: str, tmp_path: Path, *pass_args: str,
           tasks: int = 0, **settings: str) -> str:
    """``sbatch OPTIONS --export=ALL,SRC=..,DST=..,CONFIG=..,FSCLONE=.. SCRIPT``, OPTIONS the
    README's sizing for this node and T tasks, 2 per CPU unless given (the least it advises
    for a metadata-bound tree); the config's STATE_DIR is tmp_path/state. Returns the job id."""
    config = tmp_path / "config.py"
    config.write_text(f"STATE_DIR = {str(tmp_path / 'state')!r}\n")
    exports = {"SRC": str(tmp_path / "src"), "DST": str(tmp_path / "dst"),
               "CONFIG": str(config), "FSCLONE": f"{sys.executable} -m fsclone"} | settings
    env = slurm.env | {"PYTHONPATH": str(REPO)}  # the ranks run this checkout's fsclone
    env = {k: v for k, v in env.items() if not k.startswith("FSCLONE_")}
    options = sized(advice(SIZING_DOCS[0])[0], 1, tasks or 2 * slurm.cpus)
    out = slurm.run("sbatch", "--parsable", *options,
                    f"--output={tmp_path}/job-%j.out",
                    "--export=" + ",".join(["ALL", *(f"{k}={v}" for k, v in exports.items())]),
                    SCRIPTS / script, *pass_args, env=env)
    return out.strip().split(";")[0]


def output(tmp_path: Path, job: str) -> list[str]:
    return (tmp_path / f"job-{job}.out").read_text().splitlines()


def finished(slurm: SlurmCluster, tmp_path: Path, job: str) -> list[str]:
    """The output of a job that must have completed with exit 0."""
    record = slurm.wait_job(job)
    lines = output(tmp_path, job)
    assert (record["JobState"], record["ExitCode"]) == ("COMPLETED", "0:0"), "\n".join(lines)
    return lines


def aged_tree(root: Path) -> Path:
    """many_files, written two days ago (the copy pass skips files written in the last day)."""
    many_files(root, dirs=6, files=20, size=8 << 10)
    then = time.time() - 2 * DAY
    for path in [*root.rglob("*"), root]:
        os.utime(path, (time.time(), then), follow_symlinks=False)
    return root


def test_the_sizing_advice_is_what_this_slurm_accepts(slurm: SlurmCluster) -> None:
    """Each document's advice, at the fewest and the most tasks per core it names, is accepted
    for every script on this node (sbatch --test-only: nothing runs); `--ntasks-per-node`
    above the node's CPUs, which the README warns of, is refused even with --overcommit."""
    scripts = sorted(SCRIPTS.glob("*.sbatch"))
    for doc in SIZING_DOCS:
        options, per_core = advice(doc)
        for script, tasks in itertools.product(scripts, per_core):
            asked = sized(options, 1, tasks * slurm.cpus)
            try:
                slurm.run("sbatch", "--test-only", *asked, script)
            except RuntimeError as exc:
                pytest.fail(f"{doc.name}'s advice {' '.join(asked)} refused: {exc}")
    with pytest.raises(RuntimeError, match="Requested node configuration is not available"):
        slurm.run("sbatch", "--test-only", "--nodes=1", f"--ntasks-per-node={2 * slurm.cpus}",
                  "--overcommit", "--exclusive", scripts[0])


def test_copy_pass_job_copies_the_tree(slurm: SlurmCluster, tmp_path: Path) -> None:
    """At 4 tasks per CPU, the most the README advises: Slurm accepts it and the job ends."""
    aged_tree(tmp_path / "src")
    job = submit(slurm, "copy-pass.sbatch", tmp_path, tasks=4 * slurm.cpus)
    lines = finished(slurm, tmp_path, job)
    assert any(" copy done in " in line for line in lines), lines
    assert_same_tree(tmp_path / "src", tmp_path / "dst")


def test_delete_then_mtime_jobs_end_a_round_faithful(slurm: SlurmCluster,
                                                     tmp_path: Path) -> None:
    src, dst, state = aged_tree(tmp_path / "src"), tmp_path / "dst", tmp_path / "state"
    assert fsclone("pass", "sync", src, dst, state=state).returncode == 0
    for gone in ("d001/f003", "d002/f000", "d004/f019"):  # renamed or removed by their users
        (src / gone).unlink()
    dry = submit(slurm, "delete-pass.sbatch", tmp_path, "--dry-run")
    finished(slurm, tmp_path, dry)
    assert (dst / "d001/f003").exists(), "a dry run deleted"
    finished(slurm, tmp_path, submit(slurm, "delete-pass.sbatch", tmp_path))
    finished(slurm, tmp_path, submit(slurm, "mtime-pass.sbatch", tmp_path))
    assert_same_tree(src, dst)


def test_final_pass_job_makes_a_faithful_copy_of_a_hostile_tree(slurm: SlurmCluster,
                                                                 tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    build_hostile_tree(tmp_path / "src")
    lines = finished(slurm, tmp_path, submit(slurm, "final-pass.sbatch", tmp_path))
    assert any(" sync done in " in line for line in lines), lines
    assert any(" mtime done in " in line for line in lines), lines
    assert_same_tree(tmp_path / "src", tmp_path / "dst")
    assert_rsync_clean(tmp_path / "src", tmp_path / "dst")


def _counters(state: Path, pass_id: str = "") -> dict[str, int]:
    """The counters of pass ``pass_id`` (or of the only pass) in ``state``."""
    (record,) = [r for r in list_passes(state) if r.spec.id == pass_id or not pass_id]
    return record.counters


@pytest.mark.parametrize("script", ["copy-pass.sbatch", "final-pass.sbatch"])
def test_a_cancelled_job_says_how_to_resume_and_the_next_job_resumes(
        slurm: SlurmCluster, tmp_path: Path, script: str) -> None:
    """scancel is what the walltime does: SIGTERM to the batch shell and every task, SIGKILL
    KillWait seconds later. The pass stops within that, keeps its record, says so in one line
    and ends the job with 130; the same job submitted again resumes, redoing no finished
    chunk. (final-pass.sbatch runs srun twice, so its shell must outlive the SIGTERM.)"""
    src, dst, state = aged_tree(tmp_path / "src"), tmp_path / "dst", tmp_path / "state"
    with held(src / "d005/f019"):  # the pass cannot end before the job is cancelled
        job = submit(slurm, script, tmp_path)
        wait_for(lambda: any(r.counters.get("files_copied", 0) >= 40 for r in list_passes(state)),
                 120, "the pass to make progress")
        started = time.monotonic()
        slurm.run("scancel", job)
        wait_for(lambda: slurm.job(job)["JobState"] != "RUNNING", 30, "the cancel", poll=0.2)
    record = slurm.wait_job(job)
    assert time.monotonic() - started < KILL_WAIT, "the pass was killed, not stopped"
    (stopped,) = list_passes(state)
    assert stopped.status == "interrupted"
    lines = [line for line in output(tmp_path, job) if line.startswith("fsclone: ")]
    assert lines == [
        f"fsclone: {stopped.spec.op} pass {stopped.spec.id} interrupted by SIGTERM; run the same"
        f" command again to resume (or: fsclone pass resume {stopped.spec.id})"]
    assert (record["JobState"], record["ExitCode"]) == ("CANCELLED", "130:0"), record

    again = submit(slurm, script, tmp_path)
    assert f"fsclone: resuming pass {stopped.spec.id} (its options apply; --restart starts anew)" \
        in finished(slurm, tmp_path, again)
    assert_same_tree(src, dst)
    # a finished chunk done again would count its entries twice
    op, once_dst = stopped.spec.op, tmp_path / "once"
    assert fsclone("pass", op, src, once_dst, state=tmp_path / "s2").returncode == 0
    counters, once = _counters(state, stopped.spec.id), _counters(tmp_path / "s2")
    assert [counters[k] for k in ("scanned", "chunks_done")] == \
        [once[k] for k in ("scanned", "chunks_done")]


@pytest.mark.parametrize("mpi", ["pmi2", "none"])
def test_a_launcher_the_mpi_cannot_use_gives_one_line_and_exit_2(slurm: SlurmCluster,
                                                                  tmp_path: Path,
                                                                  mpi: str) -> None:
    """Debian's Open MPI has PMIx only: under `srun --mpi=pmi2` (or none) MPI_Init would abort
    with exit 1, the code for "items failed". fsclone sees it first and says what to do."""
    aged_tree(tmp_path / "src")
    job = submit(slurm, "copy-pass.sbatch", tmp_path, LAUNCH=f"srun --mpi={mpi}")
    record = slurm.wait_job(job)
    lines = output(tmp_path, job)
    hint = [line for line in lines if line.startswith("fsclone: ")]
    assert len(hint) == 2 * slurm.cpus and len(set(hint)) == 1, lines  # one line per task
    assert hint[0] == (
        f"fsclone: srun --mpi={mpi} started this task, but this Open MPI has no "
        f"{'PMI-2' if mpi == 'pmi2' else 'PMI-1'} client (it has PMIx): launch with "
        "srun --mpi=pmix, or mpirun inside the allocation")
    assert record["ExitCode"] == "2:0", lines
    assert not (tmp_path / "dst").exists()


def test_mpirun_inside_the_allocation_is_a_launcher_too(slurm: SlurmCluster,
                                                        tmp_path: Path) -> None:
    """LAUNCH=mpirun, the README's way around a PMI mismatch: Open MPI's mpirun starts the
    ranks through Slurm, and they are not taken for tasks srun started without PMIx."""
    aged_tree(tmp_path / "src")
    # no -n: mpirun takes the job's task count; no commas: --export splits on them
    launch = " ".join(mpirun_cmd(0)[:-2]).replace("self,tcp", "^vader")
    finished(slurm, tmp_path, submit(slurm, "copy-pass.sbatch", tmp_path, LAUNCH=launch))
    assert_same_tree(tmp_path / "src", tmp_path / "dst")


def test_what_srun_offers_and_what_open_mpi_components_speak() -> None:
    """The two halves of the check, on what the tests above cannot show on Debian's Open MPI
    (it has no PMI-1 or PMI-2 component) or cannot start (mpirun outside Slurm)."""
    step = {"SLURM_STEP_NUM_TASKS": "4"}
    assert [pmi.offered(step | {"SLURM_MPI_TYPE": t}) for t in ("pmix", "pmix_v4", "pmi2")] \
        == ["pmix", "pmix", "pmi2"]
    assert pmi.offered(step) == "none"  # srun --mpi=none sets no SLURM_MPI_TYPE
    assert pmi.offered(step | {"SLURM_MPI_TYPE": "cray_shasta"}) is None
    assert pmi.offered({"OMPI_COMM_WORLD_SIZE": "4", "PMIX_RANK": "0"}) is None
    assert [pmi.interface(c) for c in ("ext3x", "pmix3x", "s1", "s2", "isolated", "flux")] \
        == ["pmix", "pmix", "none", "pmi2", None, None]
