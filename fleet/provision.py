"""``edgefleet device add``: a device's secret, its Mosquitto password-file line and ACL, its agent config.

Pure text; the API stores the hash and returns the rest once (the secret is not kept in clear).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from fleet.auth import hash_secret, new_secret

ACL_TEMPLATE = """\
# Mosquitto acl_file patterns for edgefleet devices: %u is the authenticated user name, which
# is the device id, so one pattern block serves every device (Mosquitto 2.0's dynamic-security
# plugin does not substitute %u: use acl_file). Each device may publish only under its own
# devices/<id>/ and read only its own cmd topic.
pattern write {prefix}/devices/%u/status
pattern write {prefix}/devices/%u/telemetry
pattern write {prefix}/devices/%u/events
pattern read {prefix}/devices/%u/cmd

# The fleet service's own user.
user {fleet_user}
topic read {prefix}/devices/+/status
topic read {prefix}/devices/+/telemetry
topic read {prefix}/devices/+/events
topic write {prefix}/devices/+/cmd
topic readwrite {prefix}/fleet/#
"""


class DeviceAddRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    device_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    group: str | None = Field(None, max_length=64)
    tags: list[str] = Field(default_factory=list)
    secret: str | None = Field(None, min_length=16, description="omit to have the fleet generate one")


class DeviceLabels(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    group: str | None = Field(None, max_length=64, description="empty string removes the group")
    tags: list[str] | None = None


class Provisioned(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    device_id: str
    secret: str = Field(description="shown once: the broker password and the HTTP Basic password")
    password_file_line: str = Field(description="append to Mosquitto's password_file, then reload it")
    acl: str = Field(description="the acl_file patterns (the same for every device)")
    agent_config: str = Field(description="TOML for the device's /etc/edgefleet/agent.toml")
    tls_note: str


def acl_text(prefix: str, fleet_user: str = "edgefleet-fleet") -> str:
    return ACL_TEMPLATE.format(prefix=prefix, fleet_user=fleet_user)


def provision(
    request: DeviceAddRequest, *, fleet_url: str, mqtt_host: str, mqtt_port: int, prefix: str
) -> tuple[Provisioned, str]:
    """The one-time answer, and the hash to store."""
    secret = request.secret or new_secret()
    hashed = hash_secret(secret)
    agent_config = (
        f'device_id = "{request.device_id}"\n'
        'state_dir = "/var/lib/edgefleet"  # StateDirectory= of systemd/edgefleet-agent.service\n'
        'trusted_keys = ["/etc/edgefleet/trusted"]\n\n'
        "[fleet]\n"
        f'url = "{fleet_url}"\n\n'
        "[mqtt]\n"
        f'host = "{mqtt_host}"\n'
        f"port = {mqtt_port}\n"
        f'topic_prefix = "{prefix}"\n'
        f'username = "{request.device_id}"\n'
        f'password = "{secret}"\n'
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
    )
    return answer, hashed
