"""The OpenAPI document is the API's contract: schemathesis generates requests for every operation
from it and sends them over real HTTP to a running ``FleetServer`` (uvicorn, the ingester on a
private broker) on SQLite and on PostgreSQL, with a real admin token. A 500, a status the document
does not declare for the operation, or a body, content type or header that does not match the
declaration fails the test.

Each operation gets ``EXAMPLES`` valid requests (the document's schemas), ``EXAMPLES`` invalid
ones (every parameter and body mutated out of its schema: NUL bytes, integers past 2^63, strings
too long, wrong types) and, where it has path parameters, ``SEEDED_EXAMPLES`` requests naming the
records the fixture stored (a model, a provisioned device, a rollout), so that the answers for
existing records are checked too. Generation is derandomized: a run is repeatable.
``EDGEFLEET_FUZZ_EXAMPLES=N`` fuzzes harder by hand.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.errors import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from edgefleet.mosquitto import MosquittoBroker
from fleet.api import openapi
from fleet.api.app import create_app
from fleet.api.context import FleetContext
from fleet.ingest.decode import Decoded, Received, decode
from fleet.registry import Registry
from fleet.storage import create_engine_for_url, repository
from protocol.schema import ModelRef
from protocol.signing import TrustedKeys
from protocol.topics import Topics
from tests.fleet.bundles import build_bundle
from tests.fleet.mqtt_helpers import status as status_payload
from tests.support.fleet import FakeLink, RunningFleet, fleet_config, running_fleet

ADMIN_TOKEN = "fuzz-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
EXAMPLES = 20
SEEDED_EXAMPLES = 10
LAST = [
    "POST /api/v1/devices/{device_id}/rotate-secret",
    "POST /api/v1/devices/{device_id}/revoke",
    "DELETE /api/v1/devices/{device_id}",
]
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    negative_data_rejection,
    ignored_auth,
]


@pytest.fixture
def served(
    tmp_path: Path, broker: MosquittoBroker, signing_keys: tuple[Path, Path], db_url: str
) -> Iterator[tuple[RunningFleet, dict[str, Any]]]:
    """A secured fleet holding one of each record; yields it and the path parameters naming them."""
    tokens = tmp_path / "tokens"
    tokens.write_text(f"admin fuzz {ADMIN_TOKEN}\n")
    config = fleet_config(tmp_path, broker, signing_keys, db_url).model_copy(update={"tokens_file": tokens})
    with running_fleet(config) as running:
        yield running, _seed(running, signing_keys[0])


def _ok(response: requests.Response, status: int) -> Any:
    assert response.status_code == status, response.text
    return response.json()


def _seed(fleet: RunningFleet, key: Path) -> dict[str, Any]:
    for version in ("1.0.0", "2.0.0"):
        bundle = build_bundle(key, "digits", version)
        headers = {**AUTH, "Content-Type": "application/octet-stream"}
        _ok(fleet.post("/api/v1/models", data=bundle, headers=headers), 201)
    topics = Topics()
    for device_id in ("pi-1", "pi-2"):
        _ok(fleet.post("/api/v1/devices", json={"device_id": device_id}, headers=AUTH), 201)
        model = ModelRef(name="digits", version="1.0.0")
        payload = status_payload(device_id, model=model)
        item = decode(Received(topics.status(device_id), payload, repository.now()), topics, 1 << 20)
        assert isinstance(item, Decoded)
        with fleet.server.engine.begin() as conn:
            repository.store_decoded(conn, item)
    deployment = {"name": "digits", "version": "1.0.0", "device_id": None}
    _ok(fleet.post("/api/v1/deployments", json=deployment, headers=AUTH), 200)
    rollout = {"name": "digits", "version": "2.0.0", "target": {"devices": ["pi-1"]}}
    started = _ok(fleet.post("/api/v1/rollouts", json=rollout, headers=AUTH), 201)
    asked = _ok(fleet.post("/api/v1/devices/pi-1/logs", json={"lines": 10}, headers=AUTH), 202)
    return {
        "name": "digits",
        "version": "2.0.0",
        "device_id": "pi-1",
        "rollout_id": started["id"],
        "request_id": asked["request_id"],
        "group": "lab",
    }


def _config() -> schemathesis.Config:
    """The admin token for every operation (negative cases may drop it: then 401 is expected), and
    no undeclared query parameters: like every HTTP API the fleet ignores those (see docs/fleet.md).
    """
    return schemathesis.Config.from_dict(
        {
            "auth": {"openapi": {"HTTPBearer": {"bearer": ADMIN_TOKEN}}},
            "generation": {"allow-extra-parameters": False},
        }
    )


@dataclass
class Fuzzer:
    """Runs bounded property-based tests of operations against one server, counting the answers."""

    call: dict[str, Any]
    """What each request is sent with: the server's base URL, a session, a timeout."""
    answers: Counter[tuple[str, int]] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    def fuzz(
        self,
        operation: schemathesis.APIOperation[Any, Any, Any, Any],
        mode: GenerationMode,
        examples: int,
        path_parameters: dict[str, Any] | None = None,
    ) -> None:
        """Send ``examples`` generated requests; the first failure's report is kept."""

        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.explicit, Phase.generate],  # no shrinking: the run stays bounded
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode, path_parameters=path_parameters))
        def run(case: schemathesis.Case[Any]) -> None:
            response = case.call(**self.call)
            self.answers[operation.label, response.status_code] += 1
            case.validate_response(response, checks=CHECKS, transport_kwargs=self.call)

        try:
            run()
        except (Exception, FailureGroup) as exc:  # every failure is collected, then reported together
            seeded = ", seeded" if path_parameters else ""
            self.failures.append(f"{operation.label} [{mode.value}{seeded}]: {_describe(exc)}")


def _describe(exc: BaseException) -> str:
    """The message, and those of the exceptions a group (a check report, a flaky example) holds."""
    if isinstance(exc, BaseExceptionGroup):
        return "\n".join([str(exc), *(_describe(inner) for inner in exc.exceptions)])
    return f"{type(exc).__name__}: {exc}"


def test_every_operation_keeps_its_documented_contract(served: tuple[RunningFleet, dict[str, Any]]) -> None:
    fleet, seeded = served
    examples = int(os.environ.get("EDGEFLEET_FUZZ_EXAMPLES", EXAMPLES))
    document = fleet.json("/api/openapi.json")
    schema = schemathesis.openapi.from_dict(document, config=_config())
    operations = [
        (schema[path][method], declared)
        for path, methods in document["paths"].items()
        for method, declared in methods.items()
    ]
    assert len(operations) >= 28, list(document["paths"])
    # The identity changes end the seeded device's life: they run last, in this order, so the other
    # operations find it.
    operations.sort(key=lambda item: LAST.index(item[0].label) + 1 if item[0].label in LAST else 0)
    started = time.monotonic()
    with requests.Session() as session:
        fuzzer = Fuzzer({"base_url": fleet.url, "session": session, "timeout": 10})
        for operation, declared in operations:
            inputs = set(declared) & {"parameters", "requestBody", "security"}
            fuzzer.fuzz(operation, GenerationMode.POSITIVE, examples)
            if inputs:  # else nothing can be made invalid
                fuzzer.fuzz(operation, GenerationMode.NEGATIVE, examples)
            names = [
                parameter.name for parameter in operation.iter_parameters() if parameter.location == "path"
            ]
            if names:
                fixed = {name: seeded[name] for name in names}
                fuzzer.fuzz(operation, GenerationMode.POSITIVE, SEEDED_EXAMPLES, fixed)
    elapsed = time.monotonic() - started
    found, answers = fuzzer.failures, fuzzer.answers
    assert not found, f"{len(found)} contract violations in {elapsed:.0f} s:\n\n" + "\n\n".join(found)
    # The run reached the handlers: the token worked everywhere, and records were found and missed.
    authorized = {label for (label, status) in answers if status != 401}
    assert authorized == {operation.label for operation, _ in operations}, sorted(answers.items())
    statuses = {status for _label, status in answers}
    assert {200, 201, 204, 401, 404, 409, 422} <= statuses, sorted(answers.items())


def _app(tmp_path: Path, signing_keys: tuple[Path, Path]) -> FastAPI:
    engine = create_engine_for_url(f"sqlite:///{tmp_path / 'fleet.db'}")
    registry = Registry(engine, tmp_path / "artifacts", TrustedKeys.from_paths([signing_keys[1]]))
    context = FleetContext(engine, registry, FakeLink(), Topics(), max_bundle_bytes=1 << 20)
    return create_app(context)


def test_the_document_declares_the_error_body_the_app_sends(
    tmp_path: Path, signing_keys: tuple[Path, Path]
) -> None:
    document = _app(tmp_path, signing_keys).openapi()
    schemas = document["components"]["schemas"]
    assert "HTTPValidationError" not in schemas and "ValidationError" not in schemas
    assert schemas["ErrorBody"]["required"] == ["detail"]
    declared = {
        f"{method.upper()} {path}": sorted(int(status) for status in operation["responses"] if status >= "4")
        for path, methods in document["paths"].items()
        for method, operation in methods.items()
    }
    assert declared["GET /api/v1/health"] == []
    assert declared["GET /api/v1/devices"] == [400, 401, 422]  # any token is at least a viewer: no 403
    # 400: a control character in NAME or VERSION (``fleet.api.errors``); 422: any other bad value.
    assert declared["DELETE /api/v1/models/{name}/{version}"] == [400, 401, 403, 404, 409, 422]
    assert declared["POST /api/v1/models"] == [400, 401, 403, 409, 413, 503]
    assert declared["GET /api/v1/devices/{device_id}/desired"] == [400, 401, 403, 422]
    for path, methods in document["paths"].items():
        for operation in methods.values():
            for status, response in operation["responses"].items():
                if status >= "4":
                    body = response["content"]["application/json"]["schema"]
                    assert body == {"$ref": "#/components/schemas/ErrorBody"}, (path, status)


def test_a_route_the_table_does_not_know_stops_the_document(
    tmp_path: Path, signing_keys: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    app = _app(tmp_path, signing_keys)
    app.get("/api/v1/undocumented")(lambda: {})
    with pytest.raises(openapi.ContractError, match="GET /api/v1/undocumented has no row"):
        app.openapi()
    monkeypatch.setitem(openapi.ERRORS, "GET /api/v1/gone", (404,))
    with pytest.raises(openapi.ContractError, match="the app lacks"):
        openapi.operations(_app(tmp_path, signing_keys))
