"""The agent's log file and its answers to log requests: bounded on disk, filtered by level, time
and count, capped in size, compressed, chunked, and with secrets redacted."""

from __future__ import annotations

import logging
import os
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from agent.config_sections import LogConfig
from agent.log_answer import LogResponder, chunks
from agent.logfile import LOG_NAME, REDACTED, excerpt, install, redact, remove
from protocol.errors import MessageError
from protocol.messages import Command, parse_message
from protocol.remote import MAX_LOG_LINES, LogChunk, LogLevel, LogRequest
from protocol.topics import Topics
from tests.support.wait import wait_until

REQUEST_ID = "req-0123456789"


@pytest.fixture
def log_dir(tmp_path: Path) -> Iterator[Path]:
    handler = install(tmp_path, LogConfig(level=LogLevel.DEBUG, max_bytes=64 * 1024, backups=2))
    try:
        yield tmp_path / "log"
    finally:
        remove(handler)
        logging.getLogger().setLevel(logging.WARNING)


def ask(**fields: object) -> LogRequest:
    return LogRequest.model_validate({"request_id": REQUEST_ID, **fields})


def test_level_lines_and_since_select_the_newest_records(log_dir: Path) -> None:
    log = logging.getLogger("agent.test")
    for i in range(50):
        log.info("info line %d", i)
        log.warning("warning line %d", i)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("failed once")  # a record of several lines: its traceback goes with it

    warnings = excerpt(log_dir, ask(lines=7, level="warning"), 10**6)
    lines = warnings.text.splitlines()
    assert len(lines) == 7 and warnings.lines == 7  # the traceback record is 5 lines
    assert "RuntimeError: boom" in lines[-1]
    assert not any("info line" in line for line in lines)
    assert "warning line 49" in lines[1] and "warning line 48" in lines[0]

    everything = excerpt(log_dir, ask(lines=1000, level="info"), 10**6).text
    assert "info line 0" in everything and "Traceback" in everything

    future = excerpt(log_dir, ask(since=datetime.now(UTC) + timedelta(minutes=1)), 10**6)
    assert future.text == "" and future.lines == 0
    past = excerpt(log_dir, ask(since=datetime.now(UTC) - timedelta(minutes=1), lines=3), 10**6)
    assert past.lines == 3


def test_the_answer_is_capped_oldest_lines_first(log_dir: Path) -> None:
    log = logging.getLogger("agent.test")
    for i in range(400):
        log.info("line %04d %s", i, "x" * 40)
    capped = excerpt(log_dir, ask(lines=1000, max_bytes=2048), 10**6)
    assert capped.truncated
    assert len(capped.text.encode()) <= 2048
    assert "line 0399" in capped.text and "line 0000" not in capped.text
    # The device's own cap wins over a larger request.
    assert len(excerpt(log_dir, ask(lines=1000, max_bytes=10**6), 4096).text.encode()) <= 4096


def test_the_log_file_is_rotated_within_its_budget(log_dir: Path) -> None:
    log = logging.getLogger("agent.test")
    for i in range(5000):
        log.info("filler %05d %s", i, "y" * 60)
    files = sorted(log_dir.iterdir())
    assert [f.name for f in files] == [LOG_NAME, f"{LOG_NAME}.1", f"{LOG_NAME}.2"]
    assert sum(f.stat().st_size for f in files) <= 3 * 64 * 1024
    # The rotated files are read too, oldest first: the answer ends with the newest line.
    lines = excerpt(log_dir, ask(lines=1000), 10**6).text.splitlines()
    assert len(lines) == 1000 > (log_dir / LOG_NAME).read_text().count("\n")
    assert "filler 04000 " in lines[0] and "filler 04999 " in lines[-1]


def test_secrets_are_redacted(log_dir: Path) -> None:
    log = logging.getLogger("agent.test")
    log.warning("connecting with password=hunter2-secret and token: abc.def.ghi")
    log.warning('config {"api_key": "AKIA1234567890", "secret": "s3cr3t"}')
    log.warning("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.payload.sig")
    log.warning("fetching https://dev-1:device-pass-123@fleet.example/api")
    log.warning(
        "key:\n-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----"
    )
    log.warning("the broker secret is plain-mqtt-secret-42 here")
    text = excerpt(log_dir, ask(lines=100), 10**6, secrets=["plain-mqtt-secret-42"]).text
    for secret in (
        "hunter2-secret",
        "abc.def.ghi",
        "AKIA1234567890",
        "s3cr3t",
        "eyJhbGciOiJIUzI1NiJ9",
        "device-pass-123",
        "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC",
        "plain-mqtt-secret-42",
    ):
        assert secret not in text, f"{secret} leaked:\n{text}"
    assert text.count(REDACTED) >= 8
    assert "connecting with password=" in text  # what was redacted stays readable
    assert redact("nothing to hide here") == "nothing to hide here"


def test_an_answer_is_compressed_chunked_and_reassembles(log_dir: Path) -> None:
    log = logging.getLogger("agent.test")
    for i in range(3000):  # random hex compresses to about half: several chunks
        log.info("%d %s", i, os.urandom(32).hex())
    answer = chunks("dev-1", ask(lines=MAX_LOG_LINES, max_bytes=1024 * 1024), log_dir, 1024 * 1024, [])
    assert len(answer) >= 2
    assert [c.seq for c in answer] == list(range(len(answer)))
    assert all(c.total == len(answer) for c in answer)
    parsed = [LogChunk.model_validate_json(c.model_dump_json()) for c in answer]
    text = zlib.decompress(b"".join(c.piece for c in parsed)).decode()
    assert "2999" in text.splitlines()[-1]
    assert answer[0].lines == len(text.splitlines())


def test_a_missing_log_is_an_answer_with_an_error(tmp_path: Path) -> None:
    answer = chunks("dev-1", ask(), tmp_path / "nowhere", 10**6, [])
    assert len(answer) == 1 and answer[0].lines == 0 and answer[0].error is None
    assert zlib.decompress(answer[0].piece) == b""


@pytest.mark.parametrize(
    "request_fields",
    [
        {"lines": MAX_LOG_LINES + 1},
        {"lines": 0},
        {"max_bytes": 10**9},
        {"level": "verbose"},
        {"request_id": "../../x"},
        {"request_id": "a/+/#"},
    ],
)
def test_hostile_log_requests_are_refused_by_type(request_fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        LogRequest.model_validate({"request_id": REQUEST_ID, **request_fields})


def test_a_logs_command_needs_its_request() -> None:
    bare = b'{"kind":"command","command":"logs","command_id":"c1","issued_at":"2026-01-01T00:00:00Z"}'
    with pytest.raises(MessageError, match="log request"):
        parse_message(Command, bare)


def test_a_chunk_with_bad_data_is_refused() -> None:
    base = {"device_id": "dev-1", "request_id": REQUEST_ID, "lines": 0, "total": 1, "seq": 0}
    with pytest.raises(ValidationError, match="base64"):
        LogChunk.model_validate({**base, "data": "not base64!"})
    with pytest.raises(ValidationError, match="below total"):
        LogChunk.model_validate({**base, "seq": 1, "data": ""})


def test_the_responder_answers_on_its_own_thread_and_refuses_when_told(log_dir: Path) -> None:
    sent: list[tuple[str, bytes]] = []
    enabled = [True]
    topics = Topics()
    responder = LogResponder(
        "dev-1",
        topics,
        log_dir,
        lambda topic, payload, qos, retain: sent.append((topic, payload)),
        enabled=lambda: enabled[0],
        max_bytes=lambda: 10**6,
        secrets=lambda: ["the-mqtt-password"],
    )
    logging.getLogger("agent.test").warning("hello with the-mqtt-password inside")
    responder.request(ask())
    wait_until(lambda: sent, "the answer", 5, 0.01)
    topic, payload = sent[0]
    assert topic == topics.logs("dev-1", REQUEST_ID)
    text = zlib.decompress(LogChunk.model_validate_json(payload).piece).decode()
    assert "hello with [redacted] inside" in text

    enabled[0] = False
    responder.request(ask(request_id="req-refused-1"))
    refused = LogChunk.model_validate_json(sent[-1][1])
    assert refused.request_id == "req-refused-1" and "[remote] logs = false" in (refused.error or "")
