"""Captured samples per model version, the devices' drop counts, and the capture policies.

A sample is one row; its tensors are one compressed ``.npz`` blob (``in/<name>``, ``out/<name>``).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import Connection, func, insert, select, update

from fleet.storage.schema import capture_drops, capture_policies, capture_samples, device_meta
from fleet.storage.times import utc
from protocol.capture import CaptureBatch, CapturePolicy, CaptureReceipt, CaptureSample


@dataclass(frozen=True)
class StoredSample:
    uid: str
    device_id: str
    captured_at: datetime
    reason: str
    raw: bool
    inputs: dict[str, np.ndarray[Any, Any]]
    outputs: dict[str, np.ndarray[Any, Any]]


def pack(sample: CaptureSample) -> tuple[bytes, bool]:
    """The sample's tensors as one compressed .npz, and whether every input is in real values."""
    arrays = {f"in/{name}": t.array() for name, t in sample.inputs.items()}
    arrays.update({f"out/{name}": t.array() for name, t in sample.outputs.items()})
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)  # names with a slash are fine
    raw = all(t.dtype.startswith("float") for t in sample.inputs.values())
    return buffer.getvalue(), raw


def unpack(data: bytes) -> tuple[dict[str, np.ndarray[Any, Any]], dict[str, np.ndarray[Any, Any]]]:
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        inputs = {k[3:]: archive[k] for k in archive.files if k.startswith("in/")}
        outputs = {k[4:]: archive[k] for k in archive.files if k.startswith("out/")}
    return inputs, outputs


def store_capture(conn: Connection, batch: CaptureBatch, received_at: datetime) -> CaptureReceipt:
    """Store the batch's new samples (a uid already stored is counted as a duplicate) and the
    device's running drop count for its stream."""
    uids = [s.uid for s in batch.samples]
    known = set(conn.execute(select(capture_samples.c.uid).where(capture_samples.c.uid.in_(uids))).scalars())
    rows = []
    for sample in batch.samples:
        if sample.uid in known:
            continue
        known.add(sample.uid)  # a uid twice in one batch is stored once
        data, raw = pack(sample)
        rows.append(
            {
                "uid": sample.uid,
                "device_id": batch.device_id,
                "model_name": sample.model.name,
                "model_version": sample.model.version,
                "model_sha256": sample.model.sha256,
                "reason": sample.reason.value,
                "captured_at": utc(sample.ts),
                "received_at": received_at,
                "raw": raw,
                "data": data,
            }
        )
    if rows:
        conn.execute(insert(capture_samples), rows)
    _record_drops(conn, batch, received_at)
    return CaptureReceipt(stored=len(rows), duplicates=len(uids) - len(rows))


def _record_drops(conn: Connection, batch: CaptureBatch, at: datetime) -> None:
    key = (capture_drops.c.device_id == batch.device_id) & (capture_drops.c.stream == batch.stream)
    current = conn.execute(select(capture_drops.c.dropped).where(key)).scalar()
    if current is None:
        values = {"device_id": batch.device_id, "stream": batch.stream, "dropped": batch.dropped}
        conn.execute(insert(capture_drops).values(updated_at=at, **values))
    elif batch.dropped > current:  # a running total: an old batch sent again never lowers it
        conn.execute(update(capture_drops).where(key).values(dropped=batch.dropped, updated_at=at))


def capture_counts(conn: Connection) -> list[dict[str, Any]]:
    """Samples per model version and reason, with the devices they came from and the newest."""
    c = capture_samples.c
    query = (
        select(
            c.model_name,
            c.model_version,
            c.reason,
            func.count().label("samples"),
            func.max(c.captured_at).label("last"),
        )
        .group_by(c.model_name, c.model_version, c.reason)
        .order_by(c.model_name, c.model_version, c.reason)
    )
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for row in conn.execute(query):
        entry = out.setdefault(
            (row.model_name, row.model_version),
            {"name": row.model_name, "version": row.model_version, "samples": 0, "reasons": {}, "last": None},
        )
        entry["samples"] += int(row.samples)
        entry["reasons"][row.reason] = int(row.samples)
        last = utc(row.last)
        entry["last"] = last if entry["last"] is None else max(entry["last"], last)
    return list(out.values())


def capture_count(conn: Connection, name: str, version: str, device_id: str | None = None) -> int:
    query = select(func.count()).where(
        (capture_samples.c.model_name == name) & (capture_samples.c.model_version == version)
    )
    if device_id is not None:
        query = query.where(capture_samples.c.device_id == device_id)
    return int(conn.execute(query).scalar() or 0)


def dropped_by_device(conn: Connection) -> dict[str, int]:
    query = select(capture_drops.c.device_id, func.sum(capture_drops.c.dropped)).group_by(
        capture_drops.c.device_id
    )
    return {str(device): int(total or 0) for device, total in conn.execute(query)}


def iter_samples(conn: Connection, name: str, version: str, chunk: int = 500) -> Iterator[StoredSample]:
    """Every sample of one model version, oldest first, read ``chunk`` rows at a time."""
    c = capture_samples.c
    last = 0
    while True:
        query = (
            select(c.id, c.uid, c.device_id, c.captured_at, c.reason, c.raw, c.data)
            .where((c.model_name == name) & (c.model_version == version) & (c.id > last))
            .order_by(c.id)
            .limit(chunk)
        )
        rows = conn.execute(query).all()
        if not rows:
            return
        for row in rows:
            inputs, outputs = unpack(row.data)
            yield StoredSample(
                row.uid, row.device_id, utc(row.captured_at), row.reason, row.raw, inputs, outputs
            )
        last = int(rows[-1].id)


# -- policies -------------------------------------------------------------------------------------
def set_policy(conn: Connection, target: str, policy: CapturePolicy, at: datetime) -> None:
    values = {"policy": policy.model_dump(mode="json"), "updated_at": at}
    key = capture_policies.c.target == target
    if not conn.execute(update(capture_policies).where(key).values(**values)).rowcount:
        conn.execute(insert(capture_policies).values(target=target, **values))


def clear_policy(conn: Connection, target: str) -> bool:
    return bool(conn.execute(capture_policies.delete().where(capture_policies.c.target == target)).rowcount)


def policy_for(conn: Connection, device_id: str) -> CapturePolicy | None:
    """The device's own policy, else its group's, else None (the device's agent.toml decides)."""
    group = conn.execute(
        select(device_meta.c.group_name).where(device_meta.c.device_id == device_id)
    ).scalar()
    targets = [f"device:{device_id}"] + ([f"group:{group}"] if group else [])
    rows = dict(
        conn.execute(
            select(capture_policies.c.target, capture_policies.c.policy).where(
                capture_policies.c.target.in_(targets)
            )
        ).all()
    )
    for target in targets:
        if target in rows:
            return CapturePolicy.model_validate(rows[target])
    return None


def list_policies(conn: Connection) -> list[dict[str, Any]]:
    query = select(capture_policies).order_by(capture_policies.c.target)
    return [
        {"target": row.target, "policy": row.policy, "updated_at": utc(row.updated_at)}
        for row in conn.execute(query)
    ]
