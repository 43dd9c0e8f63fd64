"""The fleet tests' helpers: an in-process app with its recorded commands, a ``FleetServer`` in a
thread on a free port, private PostgreSQL schemas, and the shipped broker settings.

The fixtures that build these live in ``tests/fleet/conftest.py``.
"""

from __future__ import annotations

import os
import threading
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import Engine

from edgefleet.mosquitto import MosquittoBroker
from fleet.api.context import FleetContext
from fleet.config import FleetConfig, MqttSettings
from fleet.server import FleetServer
from fleet.storage import create_engine_for_url
from fleet.views import IngestStats

with warnings.catch_warnings():
    # starlette 1.x prefers httpx2 for its TestClient and warns about httpx, which is what is installed.
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

SHIPPED_BROKER = Path(__file__).resolve().parents[2] / "systemd" / "mosquitto"
"""The broker configuration and ACL the repository ships for the fleet's Mosquitto."""


def shipped_listener_settings() -> str:
    """The identity settings of the shipped broker configuration (the paths are the test's own)."""
    wanted = ("use_username_as_clientid", "allow_anonymous")
    lines = [line.strip() for line in (SHIPPED_BROKER / "edgefleet.conf").read_text().splitlines()]
    return "".join(f"{line}\n" for line in lines if line.startswith(wanted))


@dataclass
class FakeLink:
    """Stands in for the ingester in in-process API tests: records the commands published."""

    published: list[tuple[str, bytes]] = field(default_factory=list)
    connected: bool = True

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> bool:
        if not self.connected:
            return False
        self.published.append((topic, payload))
        return True

    def stats(self) -> IngestStats:
        return IngestStats(
            connected=self.connected,
            received=0,
            stored=0,
            duplicates=0,
            dead_lettered={},
            queue_depth=0,
            acked=0,
            manual_ack=True,
        )


PG_URL_ENV = "EDGEFLEET_TEST_PG_URL"
DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def pg_base_url() -> str:
    return os.environ.get(PG_URL_ENV) or DEFAULT_PG_URL


@contextmanager
def pg_schema_url() -> Iterator[str]:
    """A fresh schema in the test database (search_path points at it); dropped afterwards."""
    import psycopg
    from sqlalchemy.engine import make_url

    base = make_url(pg_base_url())
    schema = f"t_{uuid.uuid4().hex[:12]}"
    conninfo = base.set(drivername="postgresql").render_as_string(hide_password=False)
    try:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL at {base} is not reachable ({exc}); run scripts/setup-services")
    try:
        yield base.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
            hide_password=False
        )
    finally:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@dataclass
class InProcessFleet:
    client: TestClient
    context: FleetContext
    link: FakeLink
    artifacts: Path


@dataclass
class RunningFleet:
    server: FleetServer
    url: str
    config: FleetConfig

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return requests.get(f"{self.url}{path}", timeout=10, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return requests.post(f"{self.url}{path}", timeout=10, **kwargs)

    def json_auth(self, path: str, token: str) -> Any:
        response = self.get(path, headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200, response.text
        return response.json()

    def json(self, path: str) -> Any:
        response = self.get(path)
        assert response.status_code == 200, response.text
        return response.json()


def fleet_config(
    tmp_path: Path, broker: MosquittoBroker, signing_keys: tuple[Path, Path], db_url: str | None = None
) -> FleetConfig:
    return FleetConfig(
        db_url=db_url or f"sqlite:///{tmp_path / 'fleet.db'}",
        host="127.0.0.1",
        port=0,
        trusted_keys=[signing_keys[1].parent],
        artifacts=tmp_path / "artifacts",
        mqtt=MqttSettings(host=broker.host, port=broker.port, client_id=f"fleet-test-{uuid.uuid4().hex[:8]}"),
    )


@contextmanager
def another_pool(engine: Engine) -> Iterator[Engine]:
    """Another worker's connection pool on the same database (a second fleet worker's engine)."""
    other = create_engine_for_url(engine.url.render_as_string(hide_password=False))
    try:
        yield other
    finally:
        other.dispose()


@contextmanager
def running_fleet(config: FleetConfig) -> Iterator[RunningFleet]:
    """``FleetServer`` (uvicorn + ingester) in a thread, stopped afterwards."""
    server = FleetServer(config)
    thread = threading.Thread(target=server.run, name="fleet-under-test", daemon=True)
    thread.start()
    assert server.listening.wait(10), "the fleet did not start listening"
    assert server.ingester.wait_connected(10), "the ingester did not connect to the broker"
    try:
        yield RunningFleet(server, server.url, config)
    finally:
        server.stop()
        thread.join(15)
        assert not thread.is_alive(), "the fleet did not stop"
