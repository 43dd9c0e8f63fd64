"""Every operation of the OpenAPI document, walked with hostile values in each path parameter, query
parameter and JSON field, on SQLite and PostgreSQL: the answer is never a 500, and every refusal is
one ``{"detail": "..."}`` line. An operation this walk does not know fails the test (so a new route
is visibly untested until it has a valid example here)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from fleet.auth import parse_tokens
from fleet.ingest.decode import Decoded, Received, decode
from fleet.storage import repository
from protocol.schema import ModelRef
from protocol.topics import Topics
from tests.fleet.bundles import build_bundle
from tests.fleet.mqtt_helpers import status as status_payload
from tests.support.fleet import InProcessFleet

ADMIN = {"Authorization": "Bearer admin-token-0123456789"}
TOPICS = Topics()
HOSTILE: list[Any] = [
    "dev-a\n",
    "a\x00b",
    "\u202e\u0000",
    "x" * 5000,
    "../../etc/passwd",
    "",
    2**63,
    -(2**63) - 1,
    1e308,
    -1,
    None,
    True,
    [],
    {"a": [[[[[]]]]]},
]
PATH_VALUES = {
    "name": "digits",
    "version": "1.0.0",
    "device_id": "pi-1",
    "rollout_id": "1",
    "request_id": "0123456789abcdef",
    "group": "g",
}
QUERY_VALUES: dict[str, Any] = {
    "limit": 10,
    "open": "true",
    "hours": 1,
    "points": 10,
    "state": "closed",
    "before": 5,
    "actor": "ada",
    "action": "deploy",
    "since": "2020-01-01T00:00:00Z",
    "sort": "-last_seen",
    "format": "npz",
    "q": "pi",
    "group": "g",
    "tag": "t",
    "presence": "online",
    "model": "digits",
    "version": "1.0.0",
    # A cursor of the device list (sort -last_seen, after pi-0 seen at the epoch), base64url JSON.
    "cursor": "eyJ2IjoxLCJzb3J0IjoiLWxhc3Rfc2VlbiIsImFmdGVyIjp7ImRldmljZV9pZCI6InBpLTAiLCJsYXN0X3NlZW4iOiIx"
    "OTcwLTAxLTAxVDAwOjAwOjAwWiJ9fQ",
}
QUERY_OVERRIDES: dict[str, dict[str, Any]] = {"/api/v1/devices": {"state": "active"}}
"""Where a parameter of a shared name takes other values (``state``: alerts open/closed; devices)."""
VALID_BODIES: dict[tuple[str, str], list[dict[str, Any]]] = {
    ("post", "/api/v1/deployments"): [{"name": "digits", "version": "1.0.0", "device_id": "pi-1"}],
    ("post", "/api/v1/devices"): [{"device_id": "pi-9", "group": "g", "tags": ["t"], "secret": "s" * 16}],
    ("patch", "/api/v1/devices/{device_id}"): [{"group": "g", "tags": ["t"]}],
    ("post", "/api/v1/devices/{device_id}/logs"): [
        {"lines": 50, "level": "warning", "since": "2026-01-01T00:00:00Z", "max_bytes": 4096}
    ],
    ("put", "/api/v1/devices/{device_id}/config"): [
        {"settings": {"telemetry": {"interval_s": 30}, "log": {"level": "debug"}}}
    ],
    ("put", "/api/v1/groups/{group}/config"): [{"settings": {"update": {"probation_s": 60}}}],
    ("post", "/api/v1/capture"): [{"v": 1, "device_id": "pi-1", "stream": "c" * 32, "samples": []}],
    ("put", "/api/v1/devices/{device_id}/capture"): [{"enabled": True, "rate": 0.5, "out_of_range": True}],
    ("put", "/api/v1/groups/{group}/capture"): [{"enabled": False}],
    ("post", "/api/v1/rollouts"): [
        {"name": "digits", "version": "1.0.0", "target": {"devices": ["pi-1"]}, "waves": ["1"]},
        {"name": "digits", "version": "1.0.0", "target": {"group": "g"}, "gates": {"soak_s": 1}},
        {"name": "digits", "version": "1.0.0", "target": {"tags": ["t"]}},
    ],
    ("post", "/api/v1/models/{name}/{version}/rollback-grants"): [
        {
            "grant": '{"name": "digits", "version": "1.0.0", "issued_at": "2026-01-01T00:00:00Z", '
            '"expires_at": "2026-01-02T00:00:00Z"}',
            "signature": {"algorithm": "ed25519", "key_id": "0" * 16, "signature": "AAAA"},
        }
    ],
    **{
        ("post", f"/api/v1/rollouts/{{rollout_id}}/{action}"): [{"reason": "because"}]
        for action in ("pause", "resume", "abort", "rollback")
    },
}
RAW_BODIES = {("post", "/api/v1/models"): [b"\x00" * 600, b"not a bundle", b""]}


def _mutations(value: Any) -> Iterator[Any]:
    """``value`` with one leaf (or one whole field) replaced by each hostile value in turn."""
    if isinstance(value, dict):
        for key, inner in value.items():
            for hostile in HOSTILE:
                yield {**value, key: hostile}
            for changed in _mutations(inner):
                yield {**value, key: changed}
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            for changed in _mutations(inner):
                yield [*value[:index], changed, *value[index + 1 :]]
    else:
        yield from HOSTILE


def _as_text(value: Any) -> str:
    return quote(str(value), safe="")


@pytest.fixture
def seeded(api: InProcessFleet, signing_keys: tuple[Path, Path]) -> InProcessFleet:
    api.context.tokens = parse_tokens("admin ada admin-token-0123456789\n")
    bundle = build_bundle(signing_keys[0], "digits", "1.0.0")
    headers = {**ADMIN, "Content-Type": "application/octet-stream"}
    assert api.client.post("/api/v1/models", content=bundle, headers=headers).status_code == 201
    model = ModelRef(name="digits", version="1.0.0")
    item = decode(
        Received(TOPICS.status("pi-1"), status_payload("pi-1", model=model), repository.now()),
        TOPICS,
        1 << 20,
    )
    assert isinstance(item, Decoded)
    with api.context.engine.begin() as conn:
        repository.store_decoded(conn, item)
    return api


def _check(response: Any, what: str) -> None:
    assert response.status_code < 500, f"{what}: {response.status_code} {response.text[:300]}"
    if response.status_code >= 400:
        detail = response.json()["detail"]
        assert isinstance(detail, str) and detail and "\n" not in detail, f"{what}: {detail!r}"


def _requests(path: str, method: str, operation: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], Any]]:
    """(url, query, body) to send: valid ones, then one hostile value at a time."""
    params = operation.get("parameters", [])
    in_path = [p["name"] for p in params if p["in"] == "path"]
    in_query = [p["name"] for p in params if p["in"] == "query"]
    valid_path = path.format(**{name: PATH_VALUES[name] for name in in_path})
    values = {**QUERY_VALUES, **QUERY_OVERRIDES.get(path, {})}
    valid_query = {name: values[name] for name in in_query}
    bodies: list[Any] = VALID_BODIES.get((method, path), [None])
    for body in bodies:
        yield valid_path, valid_query, body
    for name in in_path:
        for hostile in HOSTILE:
            url = path.format(**{n: _as_text(hostile) if n == name else PATH_VALUES[n] for n in in_path})
            yield url, valid_query, bodies[0]
    for name in in_query:
        for hostile in HOSTILE:
            yield valid_path, {**valid_query, name: hostile}, bodies[0]
    for body in bodies:
        if body is not None:
            for changed in _mutations(body):
                yield valid_path, valid_query, changed


def test_no_operation_answers_500_to_hostile_input(seeded: InProcessFleet) -> None:
    client = seeded.client
    spec = client.get("/api/openapi.json").json()
    walked: set[tuple[str, str]] = set()
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            walked.add((method, path))
            body_kind = operation.get("requestBody", {}).get("content", {})
            if "application/json" in body_kind:
                assert (method, path) in VALID_BODIES, f"no valid example body for {method} {path}"
            if (method, path) in RAW_BODIES:
                for raw in RAW_BODIES[(method, path)]:
                    response = client.request(method, path, content=raw, headers=ADMIN)
                    _check(response, f"{method} {path} raw {raw[:20]!r}")
                continue
            for url, query, body in _requests(path, method, operation):
                params = {k: str(v) if not isinstance(v, str) else v for k, v in query.items()}
                response = client.request(method, url, params=params, json=body, headers=ADMIN)
                _check(response, f"{method} {url} {params} {str(body)[:200]}")
    assert len(walked) >= 27  # every route of the API, not a subset
    assert client.get("/api/v1/health").json() == {"ok": True}
