"""What a chunk may say (fsclone.schema), what a worker admits (ChunkRunner.admit), the
coordinator's signatures of planned chunks (fsclone.signing) and the roots a worker node serves
(ALLOWED_ROOTS): the guards against messages a broker account made up, without a broker."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from fsclone.chunk import Chunk, Group, Result, dumps, loads_chunk
from fsclone.config import load
from fsclone.engine.coordinator import Coordinator
from fsclone.engine.worker import ChunkRunner, handle
from fsclone.errors import ConfigError, MessageError
from fsclone.ops.registry import OPS
from fsclone.schema import SCHEMAS, temp_name
from fsclone.signing import SIGNED_OPS, Signer, may_issue, new_key, read_key
from fsclone.spec import PassSpec
from fsclone.state.directory import new_pass_id
from fsclone.transport.amqp.allowed import admitted
from fsclone.transport.base import Message
from fsclone.transport.inflight import Pushed
from fsclone.transport.memory import MemoryTransport

PASS = new_pass_id("sync")
TMP = temp_name(PASS, "big", "0123456789ab")
PLAN = "0" * 64
FILE = {"tmp": TMP, "ino": 7, "size": 100, "mtime_ns": -5, "ctime_ns": 1, "sparse": False}

#: a chunk of every op, as fsclone makes them: (path, names, args)
VALID: dict[str, tuple[str, list[str] | None, dict[str, Any]]] = {
    "copy": ("a", None, {"new": True}),
    "sync": ("a", ["x", "y"], {"shallow": True, "spread": 4, "moved": True}),
    "dirmeta": ("a", None, {"new": False}),
    "range": ("a", ["big"], {**FILE, "start": 0, "end": 50}),
    "finalize": ("a", ["big"], {**FILE, "members_failed": True, "plan": PLAN}),
    "cleanup": ("", None, {"plan": PLAN}),
    "delete": ("a", None, {}),
    "unlink": ("a", ["x"], {"plan": PLAN}),
    "count": ("a/b", None, {}),
    "prune": ("a/b", ["f1", "f2"], {"plan": PLAN}),
    "rmdir": ("a/b", [], {"plan": PLAN}),
    "mtime": ("a", None, {}),
    "scan": ("a", ["x"], {}),
    "verify": ("a", None, {}),
    "verify_range": ("a", ["big"], {"size": 100, "mtime_ns": 3, "start": 50, "end": 100}),
    "barrier": ("a", None, {}),
}


def wire(op: str, path: str, names: list[str] | None, args: dict[str, Any]) -> bytes:
    import json

    return json.dumps({"id": "c1", "op": op, "path": path, "names": names, "args": args,
                       "group": None, "attempt": 0}).encode()


def test_every_op_has_a_schema_and_its_chunks_survive_the_wire() -> None:
    assert set(SCHEMAS) == set(OPS) | {"barrier"}
    for op, (path, names, args) in VALID.items():
        chunk = Chunk(op=op, path=path, names=tuple(names) if names is not None else None,
                      args=args)
        assert loads_chunk(dumps(chunk)) == chunk


@pytest.mark.parametrize(("op", "key"), [(op, key) for op, s in SCHEMAS.items()
                                         for key in s.required])
def test_a_chunk_without_a_field_its_op_needs_is_refused(op: str, key: str) -> None:
    path, names, args = VALID[op]
    with pytest.raises(MessageError, match=f"needs '{key}'"):
        loads_chunk(wire(op, path, names, {k: v for k, v in args.items() if k != key}))


@pytest.mark.parametrize("op", list(SCHEMAS))
def test_a_chunk_with_a_field_its_op_does_not_take_is_refused(op: str) -> None:
    path, names, args = VALID[op]
    for extra in ("dst", "tmp" if "tmp" not in args else "plan2", "new" if op != "copy" else "x"):
        if extra in SCHEMAS[op].optional:
            continue
        with pytest.raises(MessageError, match="takes no"):
            loads_chunk(wire(op, path, names, {**args, extra: "/etc"}))


BAD: dict[str, list[Any]] = {
    "ino": [-1, 1.5, True, "7", None], "size": [-1, 2.0, False, "100"],
    "start": [-1, 0.5, True, "0"], "end": [-1, "50", None],
    "mtime_ns": [1.5, True, "3", None], "ctime_ns": [0.1, False, []],
    "sparse": [0, 1, "false", None], "members_failed": [1, "yes"], "new": [1, "true", None],
    "tmp": ["/etc/shadow", "../outside/x", "a/" + TMP, "x", ".fsclone-tmp.x", "", TMP + "/",
            5, None],
    "plan": ["xyz", "0" * 63, "G" * 64, 0, None],
    "shallow": [1, "true", None], "moved": [1, "yes", None],
    "spread": [0, 1, 4097, 10**9, 2.0, True, "4", None],
}


@pytest.mark.parametrize(("op", "key", "value"), [
    (op, key, value) for op, (_, _, args) in VALID.items() for key in args
    for value in BAD[key]])
def test_a_field_of_the_wrong_type_or_range_is_refused(op: str, key: str, value: Any) -> None:
    path, names, args = VALID[op]
    with pytest.raises(MessageError):
        loads_chunk(wire(op, path, names, {**args, key: value}))


@pytest.mark.parametrize(("start", "end", "size"), [(50, 50, 100), (0, 101, 100), (60, 50, 100),
                                                    (0, 1, 0)])
def test_a_byte_range_must_lie_inside_the_file(start: int, end: int, size: int) -> None:
    for op in ("range", "verify_range"):
        path, names, args = VALID[op]
        with pytest.raises(MessageError, match="byte range"):
            loads_chunk(wire(op, path, names, {**args, "start": start, "end": end,
                                               "size": size}))


@pytest.mark.parametrize(("op", "path", "names"), [
    ("range", "a", None), ("range", "a", ["big", "other"]), ("finalize", "a", []),
    ("verify_range", "a", None), ("unlink", "a", None), ("unlink", "a", []),
    ("dirmeta", "a", ["x"]), ("count", "a", ["x"]), ("cleanup", "a", None),
    ("delete", "a", ["x"]), ("unlink", "a", ["../x"]), ("prune", "/etc", None),
])
def test_names_and_paths_each_op_takes(op: str, path: str, names: list[str] | None) -> None:
    with pytest.raises(MessageError):
        loads_chunk(wire(op, path, names, VALID[op][2]))


def test_results_hand_on_only_chunks_of_the_schema() -> None:
    bad = Chunk(op="copy", path="a", args={"tmp": "/etc/shadow"})
    for result in (Result(chunk=Chunk(op="copy", path=""), children=[bad]),
                   Result(chunk=Chunk(op="copy", path=""), groups=[Group("g", 1, bad)])):
        with pytest.raises(MessageError, match="takes no 'tmp'"):
            Result.from_wire(result.to_wire())


# -- what a worker admits ------------------------------------------------------------------


@pytest.fixture
def runner(tmp_path: Path) -> Iterator[ChunkRunner]:
    (tmp_path / "src").mkdir()
    (tmp_path / "dst").mkdir()
    spec = PassSpec(id=PASS, op="sync", src=str(tmp_path / "src"), dst=str(tmp_path / "dst"),
                    started=0.0)
    runner = ChunkRunner(spec, "test.0", KEY)
    yield runner
    runner.close()


KEY = new_key()


class Answered(Pushed):
    """Keeps what the worker loop answers."""

    def __init__(self) -> None:
        self.results: list[Result] = []

    def receive(self) -> Message | None:
        return None

    def publish(self, message: Message, results: Sequence[Result]) -> None:
        self.results.extend(results)


def answer(runner: ChunkRunner, chunk: Chunk) -> Result:
    """What the worker loop answers for a message of ``chunk`` alone."""
    delivery = Answered()
    handle(delivery, Message((chunk,), runner))
    [result] = delivery.results
    return result


def chunk_of(op: str, **changes: Any) -> Chunk:
    path, names, args = VALID[op]
    fields: dict[str, Any] = {"op": op, "path": path, "args": args,
                              "names": tuple(names) if names is not None else None}
    return Chunk(**{**fields, **changes})


def test_a_worker_admits_only_temp_names_of_its_pass_for_the_chunks_file(
        runner: ChunkRunner) -> None:
    runner.admit(chunk_of("range"))
    other_pass = temp_name(new_pass_id("copy"), "big", "0123456789ab")
    for tmp in (other_pass, temp_name(PASS, "another file", "0123456789ab")):
        chunk = chunk_of("range", args={**VALID["range"][2], "tmp": tmp})
        with pytest.raises(MessageError, match="not a temp name of pass"):
            runner.admit(chunk)
        assert answer(runner, chunk).failed is not None


def test_a_worker_runs_a_planned_chunk_only_with_the_coordinators_signature(
        runner: ChunkRunner) -> None:
    signer = Signer(KEY)
    for op in sorted(SIGNED_OPS):
        unsigned = chunk_of(op, args={k: v for k, v in VALID[op][2].items() if k != "plan"})
        signed = signer.sign(PASS, unsigned)
        runner.admit(signed)
        forgeries = [
            unsigned,
            chunk_of(op),  # a made-up signature
            Signer(new_key()).sign(PASS, unsigned),  # another site's key
            signer.sign(new_pass_id("sync"), unsigned),  # another pass
            replace(signed, id="another"),
            replace(signed, group="g"),
            *([] if op == "cleanup" else [replace(signed, path="elsewhere")]),
        ]
        for forged in forgeries:
            with pytest.raises(MessageError, match="signature"):
                runner.admit(forged)
        refused = answer(runner, unsigned)
        assert refused.failed and "refused" in refused.failed


def test_a_worker_runs_no_placeholder_and_no_unknown_op(runner: ChunkRunner) -> None:
    for op in ("barrier", "rm"):
        with pytest.raises(MessageError, match="unknown op"):
            runner.admit(Chunk(op=op, path=""))


def test_the_coordinator_signs_only_what_the_plan_issues() -> None:
    coordinator = Coordinator(None, MemoryTransport())  # type: ignore[arg-type]
    prune = Chunk(op="prune", path="a/b")
    finalize = chunk_of("finalize", args=FILE)
    for parent, child, kept in [("unlink", prune, True), ("prune", prune, True),
                                ("copy", prune, False), ("sync", finalize, True),
                                ("delete", finalize, False), ("copy", chunk_of("unlink"), False),
                                ("copy", Chunk(op="cleanup", path=""), False),
                                ("copy", Chunk(op="copy", path="a"), True)]:
        result = Result(chunk=Chunk(op=parent, path="a"), children=[child],
                        groups=[Group("g", 1, child)])
        coordinator._issued(result)
        assert (result.children == [child]) is kept, (parent, child.op)
        assert (len(result.groups) == 1) is kept
        assert (len(result.errors) == 2) is not kept
        assert may_issue(parent, child.op) is kept


# -- keys and roots -----------------------------------------------------------------------


def test_a_key_file_must_be_private_and_long_enough(tmp_path: Path) -> None:
    key = tmp_path / "key"
    with pytest.raises(ConfigError, match="head -c 48 /dev/urandom"):
        read_key(str(key))
    key.write_text("k" * 40 + "\n")
    key.chmod(0o640)
    with pytest.raises(ConfigError, match=f"chmod 600 {key}"):
        read_key(str(key))
    key.chmod(0o600)
    assert read_key(str(key)) == b"k" * 40
    key.write_text("short")
    with pytest.raises(ConfigError, match="fewer than"):
        read_key(str(key))


def test_allowed_roots_from_the_config_or_the_environment(tmp_path: Path) -> None:
    assert load(None, {"FSCLONE_ALLOWED_ROOTS": "/a:/b,/c/:/d"}, {}).allowed_roots == (
        ("/a", "/b"), ("/c", "/d"))
    site = tmp_path / "config.py"
    site.write_text('ALLOWED_ROOTS = [("/mnt/old", "/mnt/new")]\n')
    assert load(str(site), {}, {}).allowed_roots == (("/mnt/old", "/mnt/new"),)
    assert load(None, {}, {}).allowed_roots == ()
    for bad in ("a:/b", "/a", "/a:/b:/c"):
        with pytest.raises(ConfigError, match="ALLOWED_ROOTS"):
            load(None, {"FSCLONE_ALLOWED_ROOTS": bad}, {})


def test_a_worker_node_serves_only_the_roots_it_allows(tmp_path: Path) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    for d in (old / "proj", new / "proj", tmp_path / "new-evil", tmp_path / "etc"):
        d.mkdir(parents=True)
    os.symlink(tmp_path / "etc", new / "proj" / "link")
    allowed = ((str(old), str(new)),)

    def spec(src: Path | str, dst: Path | str, op: str = "copy") -> PassSpec:
        return PassSpec(id=PASS, op=op, src=str(src), dst=str(dst), started=0.0)

    served, why = admitted(spec(old / "proj", new / "proj" / "sub"), allowed)
    assert served is not None and served.dst == str(new / "proj" / "sub") and not why
    assert admitted(spec(old, new), ())[1].startswith("ALLOWED_ROOTS is empty")
    forbidden: list[tuple[Path | str, Path | str]] = [
        (tmp_path / "etc", new), (old, tmp_path / "etc"), (old, tmp_path / "new-evil"),
        (old, new / "proj" / "link"), (new, old), (old, "")]
    for src, dst in forbidden:
        served, why = admitted(spec(src, dst), allowed)
        assert served is None and why, (src, dst)
    assert admitted(spec(old, "", op="scan"), allowed)[0] is not None
