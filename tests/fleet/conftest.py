"""Fixtures for the fleet tests: a fleet server over real HTTP with a real broker, or an in-process app."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.mosquitto import MosquittoBroker
from fleet.api.app import create_app
from fleet.api.context import FleetContext
from fleet.registry import Registry
from fleet.storage import create_engine_for_url
from protocol.signing import TrustedKeys
from protocol.topics import Topics
from tests.fleet.mqtt_helpers import TestClient as MqttTestClient
from tests.support.fleet import (
    FakeLink,
    InProcessFleet,
    RunningFleet,
    TestClient,
    fleet_config,
    pg_schema_url,
    running_fleet,
)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated-on-first-use database: a SQLite file, or a private PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fleet.db'}"
        return
    with pg_schema_url() as url:
        yield url


@pytest.fixture
def api(tmp_path: Path, signing_keys: tuple[Path, Path], db_url: str) -> Iterator[InProcessFleet]:
    """The FastAPI app on SQLite and on PostgreSQL, a real artifacts dir, no broker (commands recorded)."""
    engine = create_engine_for_url(db_url)
    artifacts = tmp_path / "artifacts"
    link = FakeLink()
    context = FleetContext(
        engine=engine,
        registry=Registry(engine, artifacts, TrustedKeys.from_paths([signing_keys[1]])),
        link=link,
        topics=Topics(),
        max_bundle_bytes=1024 * 1024,
        base_url="http://fleet.test",
    )
    with TestClient(create_app(context)) as client:
        yield InProcessFleet(client, context, link, artifacts)
    engine.dispose()


@pytest.fixture
def fleet(
    tmp_path: Path, broker: MosquittoBroker, signing_keys: tuple[Path, Path], db_url: str
) -> Iterator[RunningFleet]:
    """``FleetServer`` (uvicorn + ingester) in a thread on a free port, on SQLite and on PostgreSQL."""
    with running_fleet(fleet_config(tmp_path, broker, signing_keys, db_url)) as running:
        yield running


@pytest.fixture
def sqlite_fleet(
    tmp_path: Path, broker: MosquittoBroker, signing_keys: tuple[Path, Path]
) -> Iterator[RunningFleet]:
    """The same on SQLite only, for tests whose subject is not storage (the web page)."""
    with running_fleet(fleet_config(tmp_path, broker, signing_keys)) as running:
        yield running


@pytest.fixture
def device(broker: MosquittoBroker) -> Iterator[MqttTestClient]:
    """A paho client publishing as a device would."""
    client = MqttTestClient(broker.host, broker.port)
    yield client
    client.close()
