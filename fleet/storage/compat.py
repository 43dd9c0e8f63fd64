"""What runtime compatibility is judged on: a model's runtime checks, the runtime each device
reported, and the devices a rollout left out (``fleet.compat`` holds the rule itself)."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import Connection, insert, select

from fleet.compat import Compatibility, RuntimeNote, check, split
from fleet.storage.schema import devices, models, rollout_skipped
from protocol.manifest import RuntimeCheck


def model_runtimes(conn: Connection, name: str, version: str) -> dict[str, RuntimeCheck]:
    """The manifest's ``runtimes`` of a stored model (empty when it records none or is unknown)."""
    manifest = conn.execute(
        select(models.c.manifest).where(models.c.name == name, models.c.version == version)
    ).scalar()
    found = manifest.get("runtimes") if isinstance(manifest, dict) else None
    if not isinstance(found, dict):
        return {}
    return {runtime: RuntimeCheck.model_validate(check) for runtime, check in found.items()}


def reported_runtimes(conn: Connection, device_ids: Iterable[str]) -> dict[str, str | None]:
    """``{device id: the runtime its latest status named}``; a device never seen maps to None."""
    wanted = list(device_ids)
    rows = conn.execute(
        select(devices.c.device_id, devices.c.runtime).where(devices.c.device_id.in_(wanted))
    ).all()
    known = {row.device_id: row.runtime for row in rows}
    return {device_id: known.get(device_id) for device_id in wanted}


def record_skipped(conn: Connection, rollout_id: int, skipped: list[RuntimeNote]) -> None:
    if skipped:
        conn.execute(
            insert(rollout_skipped),
            [
                {"rollout_id": rollout_id, "device_id": s.device_id, "runtime": s.runtime, "reason": s.reason}
                for s in skipped
            ],
        )


def skipped_devices(conn: Connection, rollout_id: int) -> list[RuntimeNote]:
    rows = conn.execute(
        select(rollout_skipped)
        .where(rollout_skipped.c.rollout_id == rollout_id)
        .order_by(rollout_skipped.c.device_id)
    ).all()
    return [RuntimeNote(device_id=r.device_id, runtime=r.runtime, reason=r.reason) for r in rows]


def screen(
    conn: Connection, name: str, version: str, device_ids: Iterable[str]
) -> tuple[list[str], list[RuntimeNote], list[RuntimeNote]]:
    """``fleet.compat.split`` of ``device_ids`` against stored model ``name`` ``version``."""
    return split(model_runtimes(conn, name, version), reported_runtimes(conn, device_ids))


def device_verdict(conn: Connection, device_id: str, name: str, version: str) -> Compatibility:
    """Whether ``device_id``'s reported runtime can load stored model ``name`` ``version``."""
    return check(model_runtimes(conn, name, version), reported_runtimes(conn, [device_id])[device_id])
