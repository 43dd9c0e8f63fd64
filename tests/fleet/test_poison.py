"""One bad message loses nothing else: poison interleaved with a real stream, through a real broker,
into SQLite and PostgreSQL. Every valid window is stored exactly once, every poison message is
dead-lettered once with its reason, and everything is acknowledged."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.exc import SQLAlchemyError

from edgefleet.mosquitto import MosquittoBroker
from fleet.storage import repository
from fleet.storage.retention import apply_retention
from fleet.storage.schema import dead_letters, telemetry
from protocol.topics import Topics
from tests.fleet.mqtt_helpers import TestClient, status, wait_for
from tests.fleet.mqtt_helpers import telemetry as window_payload
from tests.support.fleet import RunningFleet, fleet_config, running_fleet
from tests.support.processes import FleetProcess

TOPICS = Topics()
DEVICES, WINDOWS_EACH = 40, 30
JAMMED = "jam-1"
"""A device whose rows the database itself refuses (a trigger): the batch must go on without them."""


RECENT = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
"""Windows of the last hour: older ones would be folded into hourly rollups by retention mid-test."""


def recent_window(device_id: str, seq: int) -> bytes:
    document = json.loads(window_payload(device_id, seq=seq))
    start = RECENT + timedelta(seconds=10 * seq)
    document["window_start"] = start.isoformat()
    document["window_end"] = (start + timedelta(seconds=10)).isoformat()
    return json.dumps(document).encode()


def window(device_id: str, **changes: object) -> bytes:
    document = json.loads(window_payload(device_id, seq=1))
    for dotted, value in changes.items():
        target = document
        *path, last = dotted.split(".")
        for key in path:
            target = target[key]
        target[last] = value
    return json.dumps(document).encode()


def _status(device_id: str, **changes: object) -> bytes:
    document = json.loads(status(device_id))
    document.update(changes)
    return json.dumps(document).encode()


Poison = tuple[str, Callable[[int], tuple[str, bytes]]]
POISON: list[Poison] = [
    ("too-deep", lambda i: (TOPICS.telemetry(f"p{i}"), b"[" * 200_000)),
    (
        "too-deep",
        lambda i: (TOPICS.telemetry(f"p{i}"), b'{"device_id": "x", "extra": ' + b"[" * 40 + b"]" * 40 + b"}"),
    ),
    ("out-of-range", lambda i: (TOPICS.telemetry(f"p{i}"), window(f"p{i}", requests=2**63))),
    ("out-of-range", lambda i: (TOPICS.telemetry(f"p{i}"), window(f"p{i}", seq=2**64))),
    (
        "out-of-range",
        lambda i: (TOPICS.telemetry(f"p{i}"), window(f"p{i}", errors={"a": 2**62, "b": 2**62})),
    ),
    (
        "out-of-range",
        lambda i: (
            TOPICS.telemetry(f"p{i}"),
            window_payload(f"p{i}").replace(b'"cpu_percent":37.5', b'"cpu_percent":1e400'),
        ),
    ),
    ("out-of-range", lambda i: (TOPICS.status(f"p{i}"), _status(f"p{i}", agent_version="0.1\u00000"))),
    ("out-of-range", lambda i: (TOPICS.status(f"p{i}"), _status(f"p{i}", agent_version="v" * 1000))),
    (
        "malformed-json",
        lambda i: (TOPICS.telemetry(f"p{i}"), window_payload(f"p{i}").replace(b"37.5", b"NaN")),
    ),
    ("malformed-json", lambda i: (TOPICS.telemetry(f"p{i}"), b"\xff\xfe\x00not json")),
    ("malformed-json", lambda i: (TOPICS.events(f"p{i}"), b"")),
    ("schema", lambda i: (TOPICS.events(f"p{i}"), window_payload(f"p{i}"))),
    ("schema", lambda i: (TOPICS.telemetry(f"p{i}"), b"[1, 2, 3]")),
    ("schema-version", lambda i: (TOPICS.telemetry(f"p{i}"), window(f"p{i}", schema_version=2))),
    ("device-id-mismatch", lambda i: (TOPICS.telemetry(f"p{i}"), window_payload("someone-else"))),
    ("bad-topic", lambda i: (f"{TOPICS.prefix}/devices/bad id {i}!/telemetry", window_payload("x"))),
    ("oversize", lambda i: (TOPICS.telemetry(f"p{i}"), b"{" + b" " * 300_000 + b"}")),
    ("store-failed", lambda i: (TOPICS.telemetry(JAMMED), window_payload(JAMMED, seq=i))),
]


def _refuse_jammed_rows(db_url: str) -> None:
    """A trigger that makes the database refuse one device's windows: a storage error no check predicts."""
    engine = create_engine(db_url)
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.execute(
                text(
                    "CREATE TRIGGER refuse_jam BEFORE INSERT ON telemetry "
                    f"WHEN NEW.device_id = '{JAMMED}' BEGIN SELECT RAISE(ABORT, 'refused by trigger'); END"
                )
            )
        else:
            conn.execute(
                text(
                    "CREATE FUNCTION refuse_jam() RETURNS trigger AS $$ BEGIN "
                    f"IF NEW.device_id = '{JAMMED}' THEN RAISE EXCEPTION 'refused by trigger'; END IF; "
                    "RETURN NEW; END $$ LANGUAGE plpgsql"
                )
            )
            conn.execute(
                text(
                    "CREATE TRIGGER refuse_jam BEFORE INSERT ON telemetry "
                    "FOR EACH ROW EXECUTE FUNCTION refuse_jam()"
                )
            )
    engine.dispose()


def _stream() -> tuple[list[tuple[str, bytes]], Counter[str]]:
    """1,200 valid windows from 40 devices with 50 poison messages spread through them."""
    valid = [
        (TOPICS.telemetry(f"d{n:02d}"), recent_window(f"d{n:02d}", seq))
        for seq in range(WINDOWS_EACH)
        for n in range(DEVICES)
    ]
    poison = [POISON[i % len(POISON)] for i in range(50)]
    expected = Counter(reason for reason, _ in poison)
    stream: list[tuple[str, bytes]] = []
    step = len(valid) // len(poison)
    for i, (_reason, make) in enumerate(poison):
        stream += valid[i * step : (i + 1) * step]
        stream.append(make(i))
    stream += valid[len(poison) * step :]
    return stream, expected


def test_poison_in_the_stream_loses_nothing(
    tmp_path: Path, broker: MosquittoBroker, signing_keys: tuple[Path, Path], db_url: str
) -> None:
    config = fleet_config(tmp_path, broker, signing_keys, db_url)
    stream, expected = _stream()
    with running_fleet(config) as fleet:
        _refuse_jammed_rows(db_url)
        publisher = TestClient(broker.host, broker.port)
        try:
            for topic, payload in stream:
                publisher.client.publish(topic, payload, qos=1)
            wait_for(lambda: _acked(fleet) == len(stream), 90, interval_s=0.2)
        finally:
            publisher.close()
        stats = fleet.json("/api/v1/stats")
        assert stats["stored"] == DEVICES * WINDOWS_EACH and stats["duplicates"] == 0
        assert Counter(stats["dead_lettered"]) == expected
        letters = fleet.json("/api/v1/dead-letters?limit=1000")
        assert Counter(letter["reason"] for letter in letters) == expected
        assert all(letter["detail"] for letter in letters)
        refused = [letter for letter in letters if letter["reason"] == "store-failed"]
        assert all("refused by trigger" in letter["detail"] for letter in refused)
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            per_device = dict(
                conn.execute(
                    select(telemetry.c.device_id, func.count()).group_by(telemetry.c.device_id)
                ).all()
            )
            assert per_device == {f"d{n:02d}": WINDOWS_EACH for n in range(DEVICES)}
            distinct = conn.execute(
                select(func.count()).select_from(
                    select(telemetry.c.device_id, telemetry.c.seq).distinct().subquery()
                )
            ).scalar_one()
            assert distinct == DEVICES * WINDOWS_EACH
            assert conn.execute(select(func.count()).select_from(dead_letters)).scalar_one() == 50
    finally:
        engine.dispose()


def _acked(fleet: RunningFleet) -> int:
    return int(fleet.json("/api/v1/stats")["acked"])


def test_a_retained_poison_message_is_dead_lettered_once(
    tmp_path: Path, broker: MosquittoBroker, signing_keys: tuple[Path, Path], db_url: str
) -> None:
    """The broker hands a retained message over at every subscribe: it is recorded the first time
    only, even once its dead letter has expired (its digest is remembered apart)."""
    device = TestClient(broker.host, broker.port)
    device.publish(TOPICS.status("pi-r"), b'{"broken": ', retain=True)
    device.close()
    config = fleet_config(tmp_path, broker, signing_keys, db_url)
    for start in range(3):
        # A new client id each time: a fresh subscription, so the broker sends the retained message again.
        config = config.model_copy(
            update={"mqtt": config.mqtt.model_copy(update={"client_id": f"{config.mqtt.client_id}-{start}"})}
        )
        with running_fleet(config) as fleet:
            wait_for(lambda fleet=fleet: _acked(fleet) == 1, 15)
            letters = fleet.json("/api/v1/dead-letters")
            assert [letter["reason"] for letter in letters] == (["malformed-json"] if start < 2 else [])
            assert fleet.json("/api/v1/stats")["dead_lettered"] == (
                {"malformed-json": 1} if start == 0 else {}
            )
            if start == 1:  # the dead letter expires; the retained message stays on the broker
                later = datetime.now(UTC) + timedelta(days=config.dead_letter_days + 1)
                result = apply_retention(fleet.server.engine, later, 14, 400, dead_letter_days=30)
                assert result.dead_letters_expired == 1


def test_a_flood_beyond_the_cap_keeps_exactly_the_newest(
    tmp_path: Path, broker: MosquittoBroker, signing_keys: tuple[Path, Path], db_url: str
) -> None:
    """The cap holds as the flood arrives, not at the next retention run (an hour away here)."""
    cap, flood = 25, 140
    config = fleet_config(tmp_path, broker, signing_keys, db_url).model_copy(
        update={"dead_letter_cap": cap, "retention_interval_s": 3600}
    )
    with running_fleet(config) as fleet:
        publisher = TestClient(broker.host, broker.port)
        try:
            for index in range(flood):  # one device, in order: ids follow the order of arrival
                publisher.client.publish(TOPICS.telemetry("pi-f"), f'{{"flood": {index}'.encode(), qos=1)
            wait_for(lambda: _acked(fleet) == flood, 30, interval_s=0.1)
        finally:
            publisher.close()
        assert fleet.json("/api/v1/stats")["dead_lettered"] == {"malformed-json": flood}
        with fleet.server.engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(dead_letters)).scalar_one() == cap
            kept = repository.list_dead_letters(conn, 1000)
        assert [letter.payload_prefix for letter in kept] == [
            f'{{"flood": {index}' for index in range(flood - 1, flood - cap - 1, -1)
        ]


def _serve(
    tmp_path: Path, broker: MosquittoBroker, signing_keys: tuple[Path, Path], db_url: str
) -> FleetProcess:
    """``fleet serve`` as a real process, started through the shared command line builder."""
    return FleetProcess(
        tmp_path,
        broker.port,
        signing_keys[1],
        mqtt_host=broker.host,
        db_url=db_url,
        client_id="fleet-poison-kill",
        module="fleet",
    )


@pytest.mark.slow
def test_poison_and_a_sigkill_mid_stream_lose_nothing(
    tmp_path: Path, broker: MosquittoBroker, signing_keys: tuple[Path, Path], db_url: str
) -> None:
    """The same stream, with ``fleet serve`` killed mid-way: after the restart every valid window is
    stored once and every poison message dead-lettered once (a resent one is recognised)."""
    stream, expected = _stream()
    engine = create_engine(db_url)

    def count(table: Any) -> int:
        try:
            with engine.connect() as conn:
                return int(conn.execute(select(func.count()).select_from(table)).scalar_one())
        except SQLAlchemyError:
            return 0  # not migrated yet

    fleet = _serve(tmp_path, broker, signing_keys, db_url)
    publisher = TestClient(broker.host, broker.port)
    try:
        fleet.start()
        fleet.wait_ingesting()
        _refuse_jammed_rows(db_url)
        killed = False
        for index, (topic, payload) in enumerate(stream):
            publisher.client.publish(topic, payload, qos=1)
            if not killed and index >= len(stream) // 3 and count(telemetry) > 0:
                fleet.kill()  # SIGKILL: no goodbye, nothing flushed or acknowledged on the way out
                killed = True
        assert killed, "the fleet stored nothing before the kill"
        wait_for(lambda: publisher.client.want_write() is False, 10)
        fleet.start()
        wait_for(lambda: count(telemetry) == DEVICES * WINDOWS_EACH, 90, interval_s=0.2)
        wait_for(lambda: count(dead_letters) >= len(stream) - DEVICES * WINDOWS_EACH, 30, interval_s=0.2)
        with engine.connect() as conn:
            reasons = Counter(conn.execute(select(dead_letters.c.reason)).scalars())
        assert reasons == expected
    finally:
        publisher.close()
        fleet.stop()
        engine.dispose()


def test_dead_letters_expire_and_are_capped(db_url: str) -> None:
    """A device flooding poison cannot fill the disk: old dead letters expire, the rest are capped."""
    from fleet.storage import create_engine_for_url
    from fleet.storage.records import DeadLetter, DeadReason

    engine = create_engine_for_url(db_url)
    now = datetime.now(UTC)
    try:
        with engine.begin() as conn:
            for index in range(30):
                age = timedelta(days=40) if index < 10 else timedelta(minutes=30 - index)
                letter = DeadLetter(
                    topic=TOPICS.telemetry("pi-f"),
                    reason=DeadReason.SCHEMA,
                    detail=f"letter {index}",
                    payload_prefix="{}",
                    payload_size=2,
                    received_at=now - age,
                    digest=f"{index:064x}",
                )
                repository.store_dead_letter(conn, letter)
        result = apply_retention(engine, now, 14, 400, dead_letter_days=30, dead_letter_cap=15)
        assert result.dead_letters_expired == 15  # 10 too old, then the 5 oldest beyond the cap
        with engine.connect() as conn:
            kept = repository.list_dead_letters(conn, 100)
        assert [letter.detail for letter in kept] == [f"letter {i}" for i in range(29, 14, -1)]
    finally:
        engine.dispose()
