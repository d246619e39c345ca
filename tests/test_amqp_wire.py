"""The amqp transport's plain parts, without a broker: URLs and credentials, message bodies,
batching."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fsclone.chunk import Chunk, Result
from fsclone.config import Config
from fsclone.errors import ConfigError, MessageError, UsageError
from fsclone.signing import Signer, new_key
from fsclone.spec import PassSpec
from fsclone.transport.amqp import wire
from fsclone.transport.amqp.settings import broker_settings, redact


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "rabbitmq_alice.conf"
    path.write_text("s3cret\n")
    path.chmod(0o600)
    return path


def test_url_names_user_and_vhost_and_the_password_comes_from_the_file(
        password_file: Path) -> None:
    s = broker_settings(Config(broker="amqp://alice@mq.example:5673/hpc",
                               password_file=str(password_file)))
    assert (s.host, s.port, s.username, s.vhost, s.password) == (
        "mq.example", 5673, "alice", "hpc", "s3cret")
    assert "s3cret" not in str(s) + repr(s)


def test_sdsc_convention_username_is_user_and_vhost(password_file: Path,
                                                    tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    s = broker_settings(Config(broker="amqp://mq/", username="alice",
                               password_file=str(password_file)))
    assert (s.username, s.vhost, s.port) == ("alice", "alice", 5672)
    monkeypatch.setenv("HOME", str(tmp_path))
    default = tmp_path / ".fsclone" / "rabbitmq_alice.conf"
    with pytest.raises(ConfigError, match=str(default)):
        broker_settings(Config(broker="amqp://mq", username="alice"))


@pytest.mark.parametrize(("url", "words"), [
    ("amqp://alice:s3cret@mq/hpc", "holds a password"),
    ("http://alice@mq/hpc", "bad broker URL"),
    ("amqp://mq/hpc", "names no user"),
    ("amqp://alice@mq:99999/hpc", "bad port"),
])
def test_bad_urls_are_refused_without_showing_a_password(url: str, words: str,
                                                          password_file: Path) -> None:
    with pytest.raises(UsageError, match=words) as err:
        broker_settings(Config(broker=url, password_file=str(password_file)))
    assert "s3cret" not in str(err.value)


def test_password_file_must_be_private_and_not_empty(password_file: Path) -> None:
    password_file.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        broker_settings(Config(broker="amqp://alice@mq", password_file=str(password_file)))
    password_file.write_text("\n")
    password_file.chmod(0o600)
    with pytest.raises(ConfigError, match="empty"):
        broker_settings(Config(broker="amqp://alice@mq", password_file=str(password_file)))


def test_a_client_certificate_replaces_the_password(tmp_path: Path) -> None:
    cfg = Config(broker="amqps://alice@mq/hpc", broker_cert_file=str(tmp_path / "c.pem"))
    s = broker_settings(cfg)
    assert (s.port, s.password, s.password_file) == (5671, None, None)
    with pytest.raises(UsageError, match="amqps"):
        broker_settings(Config(broker="amqp://alice@mq/hpc", broker_cert_file="c.pem"))


def test_redact() -> None:
    assert redact("at amqp://u:p%40ss@h:1/v and amqps://x:y@z/") == \
        "at amqp://u:***@h:1/v and amqps://x:***@z/"
    assert redact("amqp://u@h/v") == "amqp://u@h/v"


def test_bodies_carry_any_name_and_reject_anything_else() -> None:
    chunks = [Chunk(op="copy", path="a/\udcff b", names=("x\ny",)), Chunk(op="copy", path="")]
    assert wire.decode_chunks(wire.encode_chunks(chunks)) == chunks
    results = [Result(chunk=chunks[0], counters={"scanned": 2}, children=[chunks[1]])]
    assert wire.decode_results(wire.encode_results(results))[0].children == [chunks[1]]
    for body in (b"", b"[]", b"{}", b"\xff", b'[{"op": "copy", "path": "../x", "id": "1"}]'):
        with pytest.raises(MessageError):
            wire.decode_chunks(body)


def test_announcements_are_signed_and_an_unsigned_or_altered_one_is_refused() -> None:
    spec = PassSpec(id="p1", op="copy", src="/s", dst="/d", started=1.0)
    signer = Signer(new_key())
    body = wire.encode_announcement(wire.ACTIVE, spec, signer)
    assert wire.decode_announcement(body, signer) == (wire.ACTIVE, spec)
    with pytest.raises(MessageError, match="not signed"):
        wire.decode_announcement(body, Signer(new_key()))  # another site's key
    altered = json.loads(body)
    altered["spec"]["dst"] = "/etc"
    with pytest.raises(MessageError, match="not signed"):
        wire.decode_announcement(json.dumps(altered).encode(), signer)
    del altered["signature"]
    with pytest.raises(MessageError, match="not signed"):
        wire.decode_announcement(json.dumps(altered).encode(), signer)
    with pytest.raises(MessageError):
        wire.decode_announcement(b'{"event": "boom", "spec": {}}', signer)


def test_batches_keep_every_consumer_busy_and_spare_the_broker() -> None:
    chunks = [Chunk(op="copy", path=f"d{i}") for i in range(100)]
    assert [len(b) for b in wire.batches(chunks[:3], 0, 2)] == [1, 1, 1]
    assert [len(b) for b in wire.batches(chunks[:23], 200, 2)] == [12, 11]
    assert max(len(b) for b in wire.batches(chunks, 10_000, 1)) == wire.MAX_BATCH
    assert [c for b in wire.batches(chunks, 50, 0) for c in b] == chunks
    assert wire.Queues.of("p1").dead == "fsclone.p1.dead"
    assert wire.guard_queue("/a") != wire.guard_queue("/b")
