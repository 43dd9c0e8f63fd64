"""The files ``scripts/systemd-test`` hands to the booted machine, made on the host.

    python -m tests.device.machine_files BUNDLES OUT

BUNDLES is the output of ``python -m tests.agent.export_bundles`` (models converted and signed on
the host, TensorFlow has no place on a device). OUT receives

* ``agent.toml`` for device ``dev-1``, the fleet at http://127.0.0.1:8080 (inside the machine),
  an MQTT broker on a port where none listens (the outbox keeps the messages), short intervals;
* ``operator.pub``, the key the bundles are signed with;
* ``fleet/``, the static files a one-line HTTP server inside the machine serves as the fleet:
  ``api/v1/devices/dev-1/desired`` naming ``bundles/v1.bundle`` (the fleet's only two answers the
  agent needs to install a model);
* ``predict.json``, one request body of the bundle's own samples.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np

from edgefleet.agent_toml import agent_settings, merged, render_agent_toml
from protocol.bundle import parse_manifest, read_bundle
from protocol.messages import DesiredModel, DesiredState

DEVICE_ID = "dev-1"
FLEET_URL = "http://127.0.0.1:8080"

AGENT_SETTINGS = merged(
    agent_settings(
        DEVICE_ID,
        Path("/var/lib/edgefleet"),
        [Path("/etc/edgefleet/trusted")],
        FLEET_URL,
        mqtt_port=1,
        api_port=8500,
    ),
    {
        "fleet": {"poll_interval_s": 30},
        "api": {"unix_socket": "/run/edgefleet/agent.sock"},
        "telemetry": {"interval_s": 10},
        "update": {"probation_s": 2},
    },
)
"""Paths inside the booted machine: the installed layout (install.sh), not this host's."""


def write_machine_files(bundles: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "agent.toml").write_text(render_agent_toml(AGENT_SETTINGS))
    shutil.copy2(bundles / "operator.pub", out / "operator.pub")
    bundle = (bundles / "v1.bundle").read_bytes()
    manifest = parse_manifest(read_bundle(bundles / "v1.bundle").manifest_bytes)
    fleet = out / "fleet"
    (fleet / "bundles").mkdir(parents=True, exist_ok=True)
    (fleet / "bundles" / "v1.bundle").write_bytes(bundle)
    desired = DesiredState(
        device_id=DEVICE_ID,
        model=DesiredModel(
            name=manifest.name,
            version=manifest.version,
            sha256=hashlib.sha256(bundle).hexdigest(),
            size=len(bundle),
            url="bundles/v1.bundle",
        ),
    )
    device_dir = fleet / "api" / "v1" / "devices" / DEVICE_ID
    device_dir.mkdir(parents=True, exist_ok=True)
    (device_dir / "desired").write_text(desired.model_dump_json())
    samples = np.load(bundles / "samples_x.npy")
    (out / "predict.json").write_text(json.dumps({"inputs": samples[:4].tolist()}))
    (out / "model.txt").write_text(f"{manifest.name} {manifest.version}\n")


if __name__ == "__main__":
    write_machine_files(Path(sys.argv[1]), Path(sys.argv[2]))
