"""The device secret goes to the fleet (desired state and bundle downloads) and nowhere else."""

from __future__ import annotations

from pathlib import Path

from agent.config import AgentConfig, fleet_credentials
from agent.store import ModelStore
from agent.update.fleet_auth import basic_header
from tests.agent.peer import FleetPeer
from tests.support.agent import Bundles
from tests.support.updater import worker_runner

DEVICE = "dev-auth"
CREDENTIALS = (DEVICE, "s3cret-from-device-add")


def test_credentials_reach_the_fleet_and_never_another_origin(
    tmp_path: Path, trusted_dir: Path, bundles: Bundles, fleet_peer: FleetPeer
) -> None:
    ModelStore(tmp_path / "state").open()
    runner = worker_runner(
        tmp_path / "state", trusted_dir, fleet_peer.url, device_id=DEVICE, credentials=CREDENTIALS
    )
    fleet_peer.deploy(DEVICE, bundles.v1, "digits", "1.0.0")
    target = runner.fetch_desired().model
    assert target is not None
    runner.download(target, tmp_path / "from-fleet.bundle", attempts=1, base_delay_s=0)

    object_store = FleetPeer().start()  # the same bundle on another origin
    try:
        name = fleet_peer.filename(DEVICE)
        object_store.files[name] = bundles.v1
        elsewhere = target.model_copy(update={"url": f"{object_store.url}/bundles/{name}"})
        runner.download(elsewhere, tmp_path / "from-store.bundle", attempts=1, base_delay_s=0)
    finally:
        object_store.stop()

    expected = basic_header(CREDENTIALS)
    fleet_paths = [path for path, _ in fleet_peer.authorizations]
    assert any(path.endswith("/desired") for path in fleet_paths)
    assert any(path.startswith("/bundles/") for path in fleet_paths)
    assert all(auth == expected for _, auth in fleet_peer.authorizations)
    assert object_store.authorizations, "the object store was never asked"
    assert all(auth is None for _, auth in object_store.authorizations)
    assert (tmp_path / "from-store.bundle").read_bytes() == bundles.v1


def test_fleet_credentials_default_to_the_broker_ones() -> None:
    base = {
        "device_id": DEVICE,
        "state_dir": "/tmp/x",
        "trusted_keys": ["/tmp/k"],
        "fleet": {"url": "http://f"},
    }
    assert fleet_credentials(AgentConfig.model_validate(base)) is None
    with_mqtt = {**base, "mqtt": {"username": DEVICE, "password": "p"}}
    assert fleet_credentials(AgentConfig.model_validate(with_mqtt)) == (DEVICE, "p")
    explicit = {**with_mqtt, "fleet": {"url": "http://f", "username": "other", "password": "q"}}
    assert fleet_credentials(AgentConfig.model_validate(explicit)) == ("other", "q")
