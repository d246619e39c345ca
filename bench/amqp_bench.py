"""The amqp transport against the local one, on the bench's 50,000-file tree, side by side.

    python3 bench/amqp_bench.py                      # best of 3, on /dev/shm
    python3 bench/amqp_bench.py --repeat 1 --scale 0.1 --where disk

A private RabbitMQ (tests/services.py) and one ``fsclone worker --workers N`` are started once,
as on a cluster where workers wait for passes. Then the copy pass runs in this process through
each transport in turn (local: N forked workers; amqp: the waiting worker processes), each
onto a fresh target with a fresh state directory, after an untimed ``sync``. Reported: best and
median seconds, the amqp / local ratio of the bests (target <= 1.15), and the messages the
broker carried (work + results, counted by the coordinator; announcements apart) per file
(target <= 1 per 500 files). The first run of each transport is verified with rsync.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.report import machine_facts  # noqa: E402
from bench.tools import BENCH_ROOT_NAME, remove, verify  # noqa: E402
from bench.trees import cached, small_files  # noqa: E402
from fsclone.config import Config  # noqa: E402
from fsclone.engine.coordinator import Hooks  # noqa: E402
from fsclone.engine.launch import PassRequest, run_pass  # noqa: E402
from fsclone.transport import select  # noqa: E402
from fsclone.transport.amqp.coordinator import AmqpTransport  # noqa: E402
from fsclone.transport.base import Transport  # noqa: E402
from fsclone.transport.local import LocalTransport  # noqa: E402
from tests.services import RabbitMQServer  # noqa: E402

ROOTS = {"shm": Path("/dev/shm") / BENCH_ROOT_NAME, "disk": Path("/var/tmp") / BENCH_ROOT_NAME}
TIME_TARGET, FILES_PER_MESSAGE_TARGET = 1.15, 500


@dataclass
class Runs:
    name: str
    seconds: list[float] = field(default_factory=list)
    faithful: bool | None = None
    carried: Counter[str] = field(default_factory=Counter)

    @property
    def best(self) -> float:
        return min(self.seconds)


def log(msg: str) -> None:
    print(f"[amqp-bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def broker_and_workers(workers: int) -> Iterator[Config]:
    """A private broker and one waiting ``fsclone worker`` allowed the bench's roots; yields
    the Config that reaches them (URL without password, 0600 password and key files)."""
    with tempfile.TemporaryDirectory(prefix="fsclone-amqp-bench-") as tmp:
        work = Path(tmp)
        with RabbitMQServer(work) as server:
            password_file = work / "password"
            password_file.write_text(server.password + "\n")
            password_file.chmod(0o600)
            key_file = work / "signing.key"
            key_file.write_text(secrets.token_hex(32))
            key_file.chmod(0o600)
            url = f"amqp://{server.user}@{server.host}:{server.port}/{server.vhost}"
            cfg = Config(workers=workers, broker=url, password_file=str(password_file),
                         signing_key_file=str(key_file))
            env = {k: v for k, v in os.environ.items() if not k.startswith("FSCLONE_")}
            env["FSCLONE_PASSWORD_FILE"] = str(password_file)
            env["FSCLONE_SIGNING_KEY_FILE"] = str(key_file)
            env["FSCLONE_ALLOWED_ROOTS"] = "/:/"  # the bench's roots are wherever it is told
            with open(work / "worker.log", "wb") as out:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "fsclone", "worker", "-q", "--broker", url,
                     "--workers", str(workers)],
                    env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                    start_new_session=True)
            try:
                yield cfg
            finally:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(60)


def timed_pass(cfg: Config, src: str, dst: Path, state: Path,
               transport: Transport) -> float:
    subprocess.run(["sync"], check=False)
    started = time.perf_counter()
    _, summary = run_pass(dataclasses.replace(cfg, state_dir=str(state)),
                          PassRequest(op="copy", src=src, dst=str(dst)), Hooks(), transport)
    elapsed = time.perf_counter() - started
    if summary.status != "done" or summary.error_count:
        raise RuntimeError(f"the pass failed: {summary}")
    return elapsed


def race(cfg: Config, src: str, base: Path, repeat: int) -> tuple[Runs, Runs]:
    local, amqp = Runs("local"), Runs("amqp")
    for rep in range(repeat):
        order = (local, amqp) if rep % 2 == 0 else (amqp, local)
        for runs in order:
            dst, state = base / f"dst-{runs.name}", base / f"state-{runs.name}"
            remove(dst, base)
            remove(state, base)
            transport = select.amqp(cfg) if runs is amqp else LocalTransport(cfg.workers)
            runs.seconds.append(timed_pass(cfg, src, dst, state, transport))
            if isinstance(transport, AmqpTransport):
                runs.carried = transport.carried
            log(f"round {rep + 1}: {runs.name} {runs.seconds[-1]:.2f} s")
            if runs.faithful is None:
                runs.faithful = not verify(Path(src), dst)
    for name in ("dst-local", "dst-amqp", "state-local", "state-amqp"):
        remove(base / name, base)
    return local, amqp


def report(local: Runs, amqp: Runs, files: int, args: argparse.Namespace) -> str:
    ratio = amqp.best / local.best
    messages = amqp.carried["work"] + amqp.carried["result"]
    per = files / messages if messages else float("inf")
    facts = machine_facts(REPO)
    lines = [
        f"## amqp vs local transport: {files:,} files (0-64 KiB), {args.workers} workers, "
        f"{args.where}, best of {args.repeat}",
        "",
        "machine: " + ", ".join(f"{k} {v}" for k, v in facts.items()),
        "",
        "| transport | best s | median s | runs | faithful |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {r.name} | {r.best:.2f} | {statistics.median(r.seconds):.2f} | "
              f"{len(r.seconds)} | {'yes' if r.faithful else 'NO'} |" for r in (local, amqp)]
    lines += [
        "",
        f"- time: amqp / local = {ratio:.2f} (target <= {TIME_TARGET}): "
        f"{'PASS' if ratio <= TIME_TARGET else 'FAIL'}",
        f"- broker messages: {amqp.carried['work']} work + {amqp.carried['result']} results = "
        f"{messages}, one per {per:.0f} files (target >= {FILES_PER_MESSAGE_TARGET}): "
        f"{'PASS' if per >= FILES_PER_MESSAGE_TARGET else 'FAIL'}; plus "
        f"{amqp.carried['announcement']} announcements (one per 2 s)",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--where", choices=sorted(ROOTS), default="shm")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    base = ROOTS[args.where]
    files = int(50_000 * args.scale)
    tree = cached(base / "trees", f"small-{files}", lambda r: small_files(r, n=files), log)
    with broker_and_workers(args.workers) as cfg:
        local, amqp = race(cfg, str(tree["path"]), base, args.repeat)
    print(report(local, amqp, files, args))
    return 0 if local.faithful and amqp.faithful else 1


if __name__ == "__main__":
    sys.exit(main())
