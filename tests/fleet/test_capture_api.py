"""The capture API on the real app (SQLite and PostgreSQL): uploads stored once per uid, hostile
uploads refused with nothing stored lost, exports that ``convert``'s loader reads, policies in
the desired state."""

from __future__ import annotations

import gzip
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from converter.data import load_data
from fleet.auth import parse_tokens
from protocol.capture import CaptureTensor
from tests.support.fleet import InProcessFleet

DEVICE = "cap-1"


def _sample(x: np.ndarray[Any, Any], reason: str = "uniform") -> dict[str, Any]:
    return {
        "uid": uuid.uuid4().hex,
        "ts": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC).isoformat(),
        "model": {"name": "tab", "version": "1.0.0"},
        "reason": reason,
        "inputs": {"features": CaptureTensor.of(x).model_dump()},
        "outputs": {"score": CaptureTensor.of(np.array([float(x.sum())], dtype=np.float32)).model_dump()},
    }


def _batch(samples: list[dict[str, Any]], dropped: int = 0, stream: str = "a" * 32) -> dict[str, Any]:
    return {"kind": "capture", "device_id": DEVICE, "stream": stream, "dropped": dropped, "samples": samples}


def _count(api: InProcessFleet) -> int:
    summary = api.client.get("/api/v1/capture").json()
    return sum(m["samples"] for m in summary["models"])


def test_a_batch_is_stored_once_and_exports_as_calibration_data(api: InProcessFleet, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    xs = rng.normal(size=(12, 5)).astype(np.float32)
    samples = [_sample(x) for x in xs]
    first = api.client.post("/api/v1/capture", json=_batch(samples[:8], dropped=3))
    assert first.status_code == 200, first.text
    assert first.json() == {"stored": 8, "duplicates": 0}
    # The answer was lost: the device sends the batch again, with more samples; gzip this time.
    body = gzip.compress(json.dumps(_batch(samples, dropped=3)).encode())
    headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
    again = api.client.post("/api/v1/capture", content=body, headers=headers)
    assert again.json() == {"stored": 4, "duplicates": 8}
    summary = api.client.get("/api/v1/capture").json()
    assert summary["models"][0]["samples"] == 12 and summary["models"][0]["reasons"] == {"uniform": 12}
    assert summary["dropped"] == {DEVICE: 3}  # a running total: not 6

    exported = api.client.get("/api/v1/capture/tab/1.0.0/export")
    assert exported.status_code == 200 and exported.headers["X-Samples"] == "12"
    npz = tmp_path / "data.npz"
    npz.write_bytes(exported.content)
    loaded = load_data(npz, "calibration", need_y=False)
    np.testing.assert_array_equal(loaded.x, xs)
    with np.load(npz) as archive:
        np.testing.assert_allclose(archive["predicted"][:, 0], xs.sum(axis=1), rtol=1e-6)
    csv = api.client.get("/api/v1/capture/tab/1.0.0/export", params={"format": "csv"})
    assert csv.status_code == 200
    (tmp_path / "data.csv").write_bytes(csv.content)
    np.testing.assert_allclose(load_data(tmp_path / "data.csv", "calibration", need_y=False).x, xs)
    assert api.client.get("/api/v1/capture/tab/9.9.9/export").status_code == 404


def test_hostile_uploads_are_refused_and_nothing_stored_is_lost(api: InProcessFleet) -> None:
    good = _sample(np.ones(5, dtype=np.float32))
    assert api.client.post("/api/v1/capture", json=_batch([good])).status_code == 200
    lying = _sample(np.ones(5, dtype=np.float32))
    lying["inputs"]["features"]["shape"] = [6]  # 20 bytes of data claimed as 24
    bad_dtype = _sample(np.ones(5, dtype=np.float32))
    bad_dtype["inputs"]["features"]["dtype"] = "object"
    huge = _sample(np.ones(5, dtype=np.float32))
    huge["inputs"]["features"]["shape"] = [1 << 24, 1 << 24]
    cases: list[tuple[dict[str, Any] | bytes, dict[str, str], int]] = [
        (b"{not json", {}, 400),
        (_batch([lying]), {}, 400),
        (_batch([bad_dtype]), {}, 400),
        (_batch([huge]), {}, 400),
        (_batch([good] * 1001), {}, 400),
        ({**_batch([good]), "device_id": "bad id!"}, {}, 400),
        (b"\x1f\x8b not gzip at all", {"Content-Encoding": "gzip"}, 400),
        (gzip.compress(b" " * (17 * 1024 * 1024)), {"Content-Encoding": "gzip"}, 413),  # a gzip bomb
        (gzip.compress(json.dumps(_batch([good])).encode())[:-12], {"Content-Encoding": "gzip"}, 400),
    ]
    for body, headers, status in cases:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        response = api.client.post(
            "/api/v1/capture", content=content, headers={"Content-Type": "application/json", **headers}
        )
        assert response.status_code == status, (response.status_code, response.text[:200])
        assert response.json()["detail"]
    too_long = api.client.post(
        "/api/v1/capture", content=b"x" * (16 * 1024 * 1024 + 1), headers={"Content-Type": "application/json"}
    )
    assert too_long.status_code == 413
    assert _count(api) == 1
    assert api.client.get("/api/v1/capture/tab/1.0.0/export").headers["X-Samples"] == "1"


def test_a_capture_policy_reaches_the_desired_state_device_over_group(api: InProcessFleet) -> None:
    client = api.client
    assert client.patch(f"/api/v1/devices/{DEVICE}", json={"group": "line-2"}).status_code == 200
    assert "capture" not in client.get(f"/api/v1/devices/{DEVICE}/desired").json()
    group = client.put("/api/v1/groups/line-2/capture", json={"rate": 0.5, "out_of_range": True})
    assert group.status_code == 200, group.text
    assert client.get(f"/api/v1/devices/{DEVICE}/desired").json()["capture"]["rate"] == 0.5
    own = client.put(f"/api/v1/devices/{DEVICE}/capture", json={"enabled": False})
    assert own.status_code == 200
    assert client.get(f"/api/v1/devices/{DEVICE}/desired").json()["capture"]["enabled"] is False
    assert client.get(f"/api/v1/devices/{DEVICE}/capture").json()["enabled"] is False
    assert client.put(f"/api/v1/devices/{DEVICE}/capture", json={"rate": 2}).status_code == 422
    assert client.delete(f"/api/v1/devices/{DEVICE}/capture").status_code == 204
    assert client.get(f"/api/v1/devices/{DEVICE}/desired").json()["capture"]["rate"] == 0.5
    assert client.delete("/api/v1/groups/line-2/capture").status_code == 204
    assert client.delete("/api/v1/groups/line-2/capture").status_code == 404
    assert "capture" not in client.get(f"/api/v1/devices/{DEVICE}/desired").json()


def test_with_tokens_only_the_device_itself_uploads_its_samples(api: InProcessFleet) -> None:
    api.context.tokens = parse_tokens("admin ada admin-token-0123456789\n")
    admin = {"Authorization": "Bearer admin-token-0123456789"}
    client = api.client
    made = client.post("/api/v1/devices", json={"device_id": DEVICE}, headers=admin)
    assert made.status_code == 201, made.text
    secret = made.json()["secret"]
    other = client.post("/api/v1/devices", json={"device_id": "cap-2"}, headers=admin).json()["secret"]
    batch = _batch([_sample(np.ones(5, dtype=np.float32))])
    assert client.post("/api/v1/capture", json=batch).status_code == 401
    assert client.post("/api/v1/capture", json=batch, headers=admin).status_code == 403
    assert client.post("/api/v1/capture", json=batch, auth=("cap-2", other)).status_code == 403
    assert client.post("/api/v1/capture", json=batch, auth=(DEVICE, "wrong-secret-000000")).status_code == 401
    assert client.post("/api/v1/capture", json=batch, auth=(DEVICE, secret)).json() == {
        "stored": 1,
        "duplicates": 0,
    }
    assert client.get("/api/v1/capture", auth=(DEVICE, secret)).status_code == 401  # operators only
