"""Model registry over the in-process app (real SQLite, real artifacts dir)."""

from __future__ import annotations

from pathlib import Path

import pytest

from protocol.bundle import read_bundle
from protocol.signing import TrustedKeys, generate_private_key
from tests.fleet.bundles import build_bundle, bundle_with_bad_signature, flip_model_byte, model_files
from tests.support.fleet import InProcessFleet

OCTET = {"Content-Type": "application/octet-stream"}


def upload(api: InProcessFleet, data: bytes) -> tuple[int, dict[str, object]]:
    response = api.client.post("/api/v1/models", content=data, headers=OCTET)
    return response.status_code, response.json()


def test_upload_stores_verified_bundle(api: InProcessFleet, signing_keys: tuple[Path, Path]) -> None:
    data = build_bundle(signing_keys[0], "digits", "1.0.0")
    status, info = upload(api, data)
    assert status == 201, info
    assert info["name"] == "digits" and info["version"] == "1.0.0"
    assert info["size"] == len(data)
    assert info["task"] == "classification" and info["quantization"] == "int8"
    assert info["key_id"] == TrustedKeys.from_paths([signing_keys[1]]).ids()[0]
    stored = api.artifacts / "digits" / "1.0.0.bundle"
    assert stored.read_bytes() == data
    read_bundle(stored).verify(TrustedKeys.from_paths([signing_keys[1]]))

    listing = api.client.get("/api/v1/models").json()
    assert [(m["name"], m["version"]) for m in listing] == [("digits", "1.0.0")]
    detail = api.client.get("/api/v1/models/digits/1.0.0").json()
    assert detail["sha256"] == info["sha256"]
    assert detail["manifest"]["files"]["model.tflite"]["size"] > 0


def _rejected(api: InProcessFleet, data: bytes, expected: str) -> None:
    status, body = upload(api, data)
    assert status == 400, body
    assert expected in str(body["detail"]), body
    assert api.client.get("/api/v1/models").json() == []
    assert not any(api.artifacts.rglob("*.bundle"))


def test_flipped_byte_is_rejected_naming_the_file(
    api: InProcessFleet, signing_keys: tuple[Path, Path]
) -> None:
    files = model_files()
    data = build_bundle(signing_keys[0], files=files)
    _rejected(api, flip_model_byte(data, files), "model.tflite does not match its sha256")


def test_altered_manifest_fails_the_signature_check(
    api: InProcessFleet, signing_keys: tuple[Path, Path]
) -> None:
    _rejected(api, bundle_with_bad_signature(signing_keys[0]), "signature does not match")


def test_unknown_key_is_rejected(api: InProcessFleet) -> None:
    _rejected(api, build_bundle(generate_private_key()), "not trusted here")


def test_not_a_bundle_and_empty_body(api: InProcessFleet) -> None:
    _rejected(api, b"hello, not a tar archive" * 40, "not a bundle")
    _rejected(api, b"", "empty")


def test_reupload_is_idempotent_and_other_content_conflicts(
    api: InProcessFleet, signing_keys: tuple[Path, Path]
) -> None:
    data = build_bundle(signing_keys[0], "digits", "1.0.0")
    assert upload(api, data)[0] == 201
    status, again = upload(api, data)
    assert status == 200
    status, body = upload(api, build_bundle(signing_keys[0], "digits", "1.0.0"))
    assert status == 409
    assert "already stored" in str(body["detail"]) and str(again["sha256"]) in str(body["detail"])
    assert (api.artifacts / "digits" / "1.0.0.bundle").read_bytes() == data


def test_upload_over_the_limit_is_413(api: InProcessFleet) -> None:
    status, body = upload(api, b"\0" * (api.context.max_bundle_bytes + 1))
    assert status == 413
    assert "limit" in str(body["detail"]) or "at most" in str(body["detail"])


def test_unknown_model_is_404(api: InProcessFleet) -> None:
    for path in ("/api/v1/models/nope/1.0.0", "/api/v1/models/nope/1.0.0/bundle"):
        response = api.client.get(path)
        assert response.status_code == 404
        assert "nope 1.0.0" in response.json()["detail"]


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [("bytes=0-99", 0, 99), ("bytes=100-", 100, None), ("bytes=-50", -50, None), ("bytes=10-10", 10, 10)],
)
def test_range_download(
    api: InProcessFleet, signing_keys: tuple[Path, Path], header: str, start: int, end: int | None
) -> None:
    data = build_bundle(signing_keys[0])
    status, info = upload(api, data)
    assert status == 201
    response = api.client.get("/api/v1/models/digits/1.0.0/bundle", headers={"Range": header})
    assert response.status_code == 206
    expected = data[start : (end + 1 if end is not None else None)]
    assert response.content == expected
    first = start % len(data)
    assert response.headers["content-range"] == f"bytes {first}-{first + len(expected) - 1}/{len(data)}"
    assert response.headers["etag"] == f'"{info["sha256"]}"'


def test_full_download_and_unsatisfiable_range(api: InProcessFleet, signing_keys: tuple[Path, Path]) -> None:
    data = build_bundle(signing_keys[0])
    upload(api, data)
    full = api.client.get("/api/v1/models/digits/1.0.0/bundle")
    assert full.status_code == 200 and full.content == data
    assert full.headers["accept-ranges"] == "bytes"
    past = api.client.get("/api/v1/models/digits/1.0.0/bundle", headers={"Range": f"bytes={len(data)}-"})
    assert past.status_code == 416
    assert past.headers["content-range"] == f"bytes */{len(data)}"
    etag = full.headers["etag"]
    assert (
        api.client.get("/api/v1/models/digits/1.0.0/bundle", headers={"If-None-Match": etag}).status_code
        == 304
    )
