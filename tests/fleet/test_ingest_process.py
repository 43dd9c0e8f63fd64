"""The ingester's child writer process against a real Mosquitto, a real SQLite file and PostgreSQL:
it stores and acknowledges, a SIGKILL of the child loses nothing, and an in-memory database keeps
the writer in a thread."""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, create_engine, func, select
from sqlalchemy.pool import StaticPool

from edgefleet.mosquitto import MosquittoBroker
from fleet.config import MqttSettings
from fleet.ingest.ingester import Ingester
from fleet.storage import create_engine_for_url
from fleet.storage.migrate import upgrade
from fleet.storage.schema import devices, events, telemetry
from protocol.schema import ModelRef
from protocol.topics import Topics
from tests.fleet.mqtt_helpers import TestClient, status, update_event, wait_for
from tests.fleet.mqtt_helpers import telemetry as telemetry_payload

TOPICS = Topics()
V2 = ModelRef(name="digits", version="2.0.0", sha256="ab" * 32)


def _settings(broker: MosquittoBroker, **extra: object) -> MqttSettings:
    return MqttSettings.model_validate(
        {"host": broker.host, "port": broker.port, "client_id": f"ingest-{uuid.uuid4().hex[:8]}", **extra}
    )


@contextmanager
def _running(ingester: Ingester) -> Iterator[Ingester]:
    ingester.start()
    try:
        assert ingester.wait_connected(15), "the ingester did not connect"
        yield ingester
    finally:
        ingester.stop()


def _count(engine: Engine, table: object) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())  # type: ignore[arg-type]


def test_the_child_writer_stores_and_acknowledges(broker: MosquittoBroker, db_url: str) -> None:
    engine = create_engine_for_url(db_url)
    ingester = Ingester(_settings(broker), engine)
    assert ingester.writer == "process"
    ingester.start_writer()  # ahead of start(), which then keeps this child
    early = ingester.writer_pid
    publisher = TestClient(broker.host, broker.port)
    try:
        with _running(ingester):
            assert ingester.writer_pid == early and early not in (None, os.getpid())
            publisher.publish(TOPICS.status("c-1"), status("c-1"))
            for seq in range(20):
                publisher.publish(TOPICS.telemetry("c-1"), telemetry_payload("c-1", seq=seq))
            publisher.publish(TOPICS.events("c-1"), update_event("c-1", "commit", V2))
            publisher.client.publish(TOPICS.telemetry("c-1"), b"{not json", qos=1)
            wait_for(lambda: ingester.stats().acked == 23, 30)
            stats = ingester.stats()
            assert (stats.stored, stats.duplicates, stats.dead_lettered) == (22, 0, {"malformed-json": 1})
            times = ingester.timings()  # what the child reported
            assert times.in_child and times.messages == 23 and times.cpu_s > 0
        assert (_count(engine, telemetry), _count(engine, devices), _count(engine, events)) == (20, 1, 1)
        # Those acknowledgements reached the broker: after a restart nothing comes back.
        with _running(ingester):
            publisher.publish(TOPICS.telemetry("c-1"), telemetry_payload("c-1", seq=20))
            wait_for(lambda: ingester.stats().acked == 24, 30)
            assert ingester.stats().duplicates == 0
        assert _count(engine, telemetry) == 21
    finally:
        publisher.close()
        engine.dispose()


def test_a_sigkill_of_the_child_loses_nothing(broker: MosquittoBroker, db_url: str) -> None:
    """The child dies mid-stream (batches sent to it, some committed and not yet acknowledged): the
    parent starts another and sends it what was in flight; every window ends up stored once."""
    engine = create_engine_for_url(db_url)
    ingester = Ingester(_settings(broker, batch_size=20), engine)
    total, devices_n = 1500, 15
    publisher = TestClient(broker.host, broker.port)
    try:
        with _running(ingester):
            killed = None
            for i in range(total):
                device_id = f"x{i % devices_n:02d}"
                payload = telemetry_payload(device_id, seq=i // devices_n)
                publisher.client.publish(TOPICS.telemetry(device_id), payload, qos=1)
                if i == total * 2 // 3:  # the rest of the stream goes to the next child
                    wait_for(lambda: ingester.stats().stored > 0, 30, interval_s=0.01)
                    killed = ingester.writer_pid
                    assert killed is not None
                    os.kill(killed, signal.SIGKILL)
            wait_for(lambda: ingester.stats().acked == total, 90, interval_s=0.1)
            assert ingester.writer_pid != killed
            stats = ingester.stats()
            assert stats.stored == total - stats.duplicates and stats.dead_lettered == {}
        with engine.connect() as conn:
            per_device = conn.execute(
                select(telemetry.c.device_id, func.count()).group_by(telemetry.c.device_id)
            ).all()
        assert {count for _, count in per_device} == {total // devices_n}
        assert len(per_device) == devices_n
    finally:
        publisher.close()
        engine.dispose()


def test_an_in_memory_database_keeps_the_writer_in_a_thread(broker: MosquittoBroker) -> None:
    engine = create_engine(
        "sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False}
    )  # one connection shared by every thread: the only way an in-memory database is one database
    upgrade(engine)
    ingester = Ingester(_settings(broker), engine)
    assert ingester.writer == "thread"
    publisher = TestClient(broker.host, broker.port)
    try:
        with _running(ingester):
            assert ingester.writer_pid is None
            for seq in range(5):
                publisher.publish(TOPICS.telemetry("m-1"), telemetry_payload("m-1", seq=seq))
            wait_for(lambda: ingester.stats().acked == 5, 30)
            assert not ingester.timings().in_child
        assert _count(engine, telemetry) == 5
    finally:
        publisher.close()
        engine.dispose()


def test_the_writer_setting_can_ask_for_a_thread(broker: MosquittoBroker, db_url: str) -> None:
    engine = create_engine_for_url(db_url)
    try:
        assert Ingester(_settings(broker, writer="thread"), engine).writer == "thread"
        assert Ingester(_settings(broker, writer="process"), engine).writer == "process"
    finally:
        engine.dispose()


def test_the_child_config_does_not_show_the_password(broker: MosquittoBroker) -> None:
    from fleet.ingest.relay import child_config

    engine = create_engine("postgresql+psycopg://fleet:s3cret@db.invalid/fleet")
    config = child_config(engine, _settings(broker, writer="process"), 100)
    assert not isinstance(config, str)
    assert "s3cret" in config.db_url and "s3cret" not in config.safe_url
    assert "s3cret" not in repr(config) and "s3cret" not in str(config)
