"""The device secret never follows a redirect to another origin (real HTTP servers on two ports)."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from agent.errors import DownloadError
from agent.store import ModelStore
from agent.update.fleet_auth import basic_header
from agent.update.runner import WorkerRunner
from protocol.messages import DesiredModel
from tests.agent.peer import FleetPeer
from tests.support.updater import worker_runner

DEVICE = "dev-redirect"
CREDENTIALS = (DEVICE, "s3cret-that-must-stay-home")


class Redirector:
    """A real HTTP server: ``bodies[path]`` as JSON, or a redirect to ``routes[path]``, else 404."""

    def __init__(self) -> None:
        self.routes: dict[str, str] = {}
        self.bodies: dict[str, bytes] = {}
        self.seen: list[tuple[str, str | None]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                owner.seen.append((self.path, self.headers.get("Authorization")))
                body = owner.bodies.get(self.path)
                if body is not None:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                target = owner.routes.get(self.path)
                self.send_response(302 if target else 404)
                if target:
                    self.send_header("Location", target)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fleet() -> Iterator[Redirector]:
    redirector = Redirector()
    yield redirector
    redirector.stop()


@pytest.fixture
def elsewhere() -> Iterator[FleetPeer]:
    peer = FleetPeer().start()
    yield peer
    peer.stop()


@pytest.fixture
def trusted_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "trusted"  # downloads check the sha256, not signatures: no key needed
    folder.mkdir()
    return folder


def _runner(tmp_path: Path, fleet_url: str, trusted_dir: Path) -> WorkerRunner:
    ModelStore(tmp_path / "state").open()
    return worker_runner(
        tmp_path / "state", trusted_dir, fleet_url, device_id=DEVICE, credentials=CREDENTIALS
    )


DESIRED = f"/api/v1/devices/{DEVICE}/desired"


def test_a_desired_state_redirect_to_another_origin_is_refused_unsent(
    tmp_path: Path, trusted_dir: Path, fleet: Redirector, elsewhere: FleetPeer
) -> None:
    fleet.routes[DESIRED] = f"{elsewhere.url}{DESIRED}"
    with pytest.raises(DownloadError, match="another origin: refused") as caught:
        _runner(tmp_path, fleet.url, trusted_dir).fetch_desired()
    assert elsewhere.url in str(caught.value)
    assert fleet.seen == [(DESIRED, basic_header(CREDENTIALS))]
    assert elsewhere.requests == [], "the other origin was asked at all"


def test_a_redirect_to_another_port_of_the_same_host_is_another_origin(
    tmp_path: Path, trusted_dir: Path, fleet: Redirector
) -> None:
    other = Redirector()
    try:
        fleet.routes[DESIRED] = f"{other.url}{DESIRED}"
        with pytest.raises(DownloadError, match="another origin"):
            _runner(tmp_path, fleet.url, trusted_dir).fetch_desired()
        assert other.seen == []
    finally:
        other.stop()


def test_a_redirect_within_the_fleet_keeps_the_credentials(
    tmp_path: Path, trusted_dir: Path, fleet: Redirector
) -> None:
    moved = f"/v2{DESIRED}"
    fleet.routes[DESIRED] = f"{fleet.url}{moved}"
    fleet.bodies[moved] = json.dumps({"kind": "desired", "schema_version": 1, "device_id": DEVICE}).encode()
    desired = _runner(tmp_path, fleet.url, trusted_dir).fetch_desired()
    assert (desired.device_id, desired.model) == (DEVICE, None)
    assert fleet.seen == [(DESIRED, basic_header(CREDENTIALS)), (moved, basic_header(CREDENTIALS))]


def test_a_bundle_redirected_to_another_origin_is_fetched_without_the_secret(
    tmp_path: Path, trusted_dir: Path, fleet: Redirector, elsewhere: FleetPeer
) -> None:
    bundle = os.urandom(50_000)
    elsewhere.files["b.bundle"] = bundle
    fleet.routes["/api/v1/models/digits/1.0.0/bundle"] = f"{elsewhere.url}/bundles/b.bundle"
    target = DesiredModel(
        name="digits",
        version="1.0.0",
        sha256=hashlib.sha256(bundle).hexdigest(),
        size=len(bundle),
        url="/api/v1/models/digits/1.0.0/bundle",
    )
    runner = _runner(tmp_path, fleet.url, trusted_dir)
    runner.download(target, tmp_path / "b.bundle", attempts=1, base_delay_s=0)
    assert (tmp_path / "b.bundle").read_bytes() == bundle
    assert fleet.seen == [("/api/v1/models/digits/1.0.0/bundle", basic_header(CREDENTIALS))]
    assert elsewhere.authorizations == [("/bundles/b.bundle", None)]
