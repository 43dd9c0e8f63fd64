"""Deployments: set the desired model of one device or of the whole fleet, then tell devices to check."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable

from sqlalchemy import Engine

from fleet.compat import refuse
from fleet.errors import NotFoundError
from fleet.storage import repository
from fleet.storage.compat import device_verdict, screen
from fleet.storage.remote import config_for
from fleet.views import DeploymentResult
from protocol.messages import Command, CommandKind, DesiredModel, DesiredState
from protocol.topics import Topics

log = logging.getLogger(__name__)


class Publisher(Protocol):
    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> bool: ...


@runtime_checkable
class RefusalAware(Protocol):
    """A publisher that hears the broker's answer: ``refused(topic)`` after an ACL denial."""

    def refused(self, topic: str) -> bool: ...


@runtime_checkable
class Reconnecting(Protocol):
    """A publisher that counts its connections (``Ingester.generation``): after a reconnect the
    broker may have restarted without its retained messages, so they must all be sent again."""

    @property
    def generation(self) -> int: ...


def connection_generation(publisher: Publisher) -> int | None:
    """The publisher's connection count, None when it does not tell (then nothing is resent)."""
    return publisher.generation if isinstance(publisher, Reconnecting) else None


def was_refused(publisher: Publisher, topic: str) -> bool:
    """True when the broker refused the last publish on ``topic`` (so it should be sent again)."""
    return isinstance(publisher, RefusalAware) and publisher.refused(topic)


def bundle_path(name: str, version: str) -> str:
    return f"/api/v1/models/{name}/{version}/bundle"


def deploy(
    engine: Engine,
    publisher: Publisher,
    topics: Topics,
    *,
    name: str,
    version: str,
    device_id: str | None,
) -> DeploymentResult:
    """Record the assignment, then publish ``check-update`` (QoS 1) to every device it affects."""
    target = repository.FLEET_DEFAULT if device_id is None else device_id
    with engine.begin() as conn:
        if repository.get_model(conn, name, version) is None:
            raise NotFoundError(f"no model {name} {version} in the registry; push it first")
        following = repository.device_ids_following(conn, target)
        scope = following if device_id is None else [target]
        allowed, skipped, unchecked = screen(conn, name, version, scope)
        if device_id is not None and skipped:
            raise refuse(f"{name} {version}", device_id, skipped[0].reason)
        repository.set_desired(conn, target, name, version)
    affected = [device for device in allowed if device in following]
    notified: list[str] = []
    missed: list[str] = []
    for device in affected:
        command = Command(
            command=CommandKind.CHECK_UPDATE, command_id=uuid.uuid4().hex, issued_at=datetime.now(UTC)
        )
        if publisher.publish(topics.cmd(device), command.model_dump_json().encode(), qos=1):
            notified.append(device)
        else:
            missed.append(device)
    log.info(
        "deployed %s %s to %s; notified %d device(s)%s%s",
        name,
        version,
        device_id or "the whole fleet",
        len(notified),
        f", could not notify {len(missed)}" if missed else "",
        f", skipped {len(skipped)} whose runtime cannot load it" if skipped else "",
    )
    return DeploymentResult(
        name=name,
        version=version,
        device_id=device_id,
        devices_notified=notified,
        devices_not_notified=missed,
        devices_skipped=skipped,
        devices_unchecked=unchecked,
    )


def desired_state(engine: Engine, device_id: str, base_url: str) -> DesiredState:
    """What ``device_id`` should run: its own assignment, else the fleet default, else nothing;
    with its remote config (its own, else its group's), when one is set."""
    with engine.begin() as conn:
        assignment = repository.desired_for(conn, device_id)
        if assignment is not None:  # never hand a device a model its runtime cannot load
            verdict = device_verdict(conn, device_id, assignment.model.name, assignment.model.version)
            assignment = assignment if verdict.allowed else None
        found = config_for(conn, device_id)
    config = found[0] if found is not None else None
    if assignment is None:
        return DesiredState(device_id=device_id, config=config)
    model = assignment.model
    return DesiredState(
        device_id=device_id,
        model=DesiredModel(
            name=model.name,
            version=model.version,
            sha256=model.sha256,
            size=model.size,
            url=f"{base_url}{bundle_path(model.name, model.version)}",
        ),
        updated_at=assignment.updated_at,
        config=config,
    )
