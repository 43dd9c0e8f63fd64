"""``edgefleet device add``: a device's secret, its Mosquitto password-file line and ACL, its agent config.

Pure text; the API stores the hash and returns the rest once (the secret is not kept in clear).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Annotated, Literal
from urllib.parse import urlsplit

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from fleet.auth import hash_secret, new_secret
from fleet.broker_files import BrokerChange, manual_change
from fleet.errors import FleetError
from fleet.names import Label, NewDeviceId, Secret

FLEET_BROKER_USER = "edgefleet-fleet"
"""The fleet's own (privileged) broker user in the shipped ACL."""

ACL_TEMPLATE = """\
# Mosquitto acl_file for edgefleet (systemd/mosquitto/edgefleet.acl is this file for the default
# prefix; `edgefleet device add` prints it for yours). %u is the authenticated user name, which is
# the device id, so one pattern block serves every device (Mosquitto 2.0's dynamic-security plugin
# does not substitute %u: use acl_file). Each device may publish only under its own devices/<id>/
# (its answers to log requests on devices/<id>/logs/<request-id>) and read only its own cmd topic
# (where log requests arrive too).
pattern write {prefix}/devices/%u/status
pattern write {prefix}/devices/%u/telemetry
pattern write {prefix}/devices/%u/events
pattern write {prefix}/devices/%u/logs/+
pattern read {prefix}/devices/%u/cmd

# The fleet service's own user: device messages and log answers in, commands out, its summary,
# health and alert topics, and Home Assistant discovery configs (--homeassistant).
user {fleet_user}
topic read {prefix}/devices/+/status
topic read {prefix}/devices/+/telemetry
topic read {prefix}/devices/+/events
topic read {prefix}/devices/+/logs/+
topic write {prefix}/devices/+/cmd
topic readwrite {prefix}/fleet/#
topic write homeassistant/sensor/#
"""


AGENT_CONFIG_HEADER = (
    "# /etc/edgefleet/agent.toml, made by `edgefleet device add` (mode 0600: it holds the secret).\n"
    "# state_dir is the StateDirectory= of systemd/edgefleet-agent.service.\n"
)


FleetUrl = Annotated[
    str, StringConstraints(max_length=2048, pattern=r"^https?://[A-Za-z0-9._~:\[\]-]+(/[\x21-\x7e]*)?$")
]
"""The fleet's URL as a device reaches it."""
Host = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:-]{1,253}$")]
"""A host name or an IP address."""


class ProvisionError(FleetError):
    """The agent config would point the device somewhere it cannot reach (400)."""


class DeviceAddRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    device_id: NewDeviceId
    group: Label | None = None
    tags: list[Label] = Field(default_factory=list, max_length=32)
    secret: Secret | None = Field(None, description="omit to have the fleet generate one")
    fleet_url: FleetUrl | None = Field(
        None, description="the fleet's URL as the device reaches it (default: the fleet's public URL)"
    )
    mqtt_host: Host | None = Field(
        None, description="the broker as the device reaches it (default: the broker the fleet uses)"
    )
    mqtt_port: int | None = Field(None, ge=1, le=65535, description="default: the port the fleet uses")


def unreachable(host: str | None) -> bool:
    """Loopback or a wildcard address: right on this machine only (or nowhere)."""
    name = (host or "").strip("[]").lower()
    if name in ("", "localhost") or name.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


@dataclass(frozen=True)
class Endpoints:
    """Where the fleet itself is reached and reaches its broker (``fleet serve``'s view)."""

    fleet_url: str
    mqtt_host: str
    mqtt_port: int
    exposed: bool
    """The fleet listens on, or is published at, an address other machines reach."""

    def for_device(self, request: DeviceAddRequest) -> tuple[str, str, int]:
        """The request's values, else the fleet's own; a default that is loopback while the fleet is
        reached from other machines is refused (the device would talk to itself, and fail only there)."""
        fleet_url = request.fleet_url or self.fleet_url
        mqtt_host = request.mqtt_host or self.mqtt_host
        if request.fleet_url is None and self.exposed and unreachable(urlsplit(fleet_url).hostname):
            raise ProvisionError(
                f"the fleet's own URL {fleet_url} is not one a device can reach: pass the fleet's public "
                "URL (device add --fleet-url, or fleet serve --public-url)"
            )
        if request.mqtt_host is None and self.exposed and unreachable(mqtt_host):
            raise ProvisionError(
                f"the fleet reaches its broker at {mqtt_host}, which a device cannot: pass the broker's "
                "address as the device sees it (device add --mqtt-host, --mqtt-port)"
            )
        return fleet_url, mqtt_host, request.mqtt_port or self.mqtt_port


class DeviceLabels(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    group: Label | Literal[""] | None = Field(None, description="empty string removes the group")
    tags: list[Label] | None = Field(None, max_length=32)


class Provisioned(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    device_id: str
    secret: str = Field(description="shown once: the broker password and the HTTP Basic password")
    password_file_line: str = Field(description="append to Mosquitto's password_file, then reload it")
    acl: str = Field(description="the acl_file patterns (the same for every device)")
    agent_config: str = Field(description="TOML for the device's /etc/edgefleet/agent.toml")
    tls_note: str
    broker: BrokerChange = Field(description="whether the fleet applied the password-file line itself")


def acl_text(prefix: str, fleet_user: str = FLEET_BROKER_USER) -> str:
    return ACL_TEMPLATE.format(prefix=prefix, fleet_user=fleet_user)


def provision(
    request: DeviceAddRequest, *, fleet_url: str, mqtt_host: str, mqtt_port: int, prefix: str
) -> tuple[Provisioned, str]:
    """The one-time answer, and the hash to store."""
    secret = request.secret or new_secret()
    hashed = hash_secret(secret)
    agent_config = AGENT_CONFIG_HEADER + tomli_w.dumps(
        {
            "device_id": request.device_id,
            "state_dir": "/var/lib/edgefleet",
            "trusted_keys": ["/etc/edgefleet/trusted"],
            "fleet": {"url": fleet_url},
            "mqtt": {
                "host": mqtt_host,
                "port": mqtt_port,
                "topic_prefix": prefix,
                "username": request.device_id,
                "password": secret,
            },
        }
    )
    answer = Provisioned(
        device_id=request.device_id,
        secret=secret,
        password_file_line=f"{request.device_id}:{hashed}",
        acl=acl_text(prefix),
        agent_config=agent_config,
        tls_note=(
            "Stronger: give the device a TLS client certificate whose CN is its id and set "
            "`require_certificate true` and `use_identity_as_username true` on the listener; "
            "the same %u ACL patterns then apply to the certificate's CN."
        ),
        broker=manual_change(request.device_id, f"{request.device_id}:{hashed}", replaces=False),
    )
    return answer, hashed


class SecretRotated(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    device_id: str
    secret: str = Field(
        description="shown once; the old secret no longer opens the API (nor the broker, once applied)"
    )
    password_file_line: str
    broker: BrokerChange


class IdentityChange(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    device_id: str
    state: Literal["revoked", "deleted"]
    broker: BrokerChange
