"""What the inference API makes of a request before the model sees it: which body form it is,
the JSON envelope, what an ``.npz`` unpacks to, and the errors it answers with."""

from __future__ import annotations

import io
import json
import zipfile
from email.message import Message
from typing import Any

from agent.predict_io import BINARY, NPZ

NO_MODEL = "no model is active yet; the agent installs one when the fleet deploys it"
BUSY = "the agent is busy with other requests; retry in a second"
RETRY_AFTER_S = 1


class Refused(Exception):  # noqa: N818 - control flow of the handler, never leaves it
    """A request answered with an error status (and counted in telemetry under ``kind``)."""

    def __init__(
        self,
        status: int,
        message: str,
        kind: str = "bad_request",
        *,
        nonfinite: bool = False,
        close: bool = False,
        retry_after: bool = False,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind
        self.nonfinite, self.close, self.retry_after = nonfinite, close, retry_after


def body_form(content_type: str) -> str:
    """Which body form a Content-Type names: npz, float32 or (anything else) json."""
    media = content_type.split(";", maxsplit=1)[0].strip().lower()
    return {NPZ: "npz", BINARY: "float32"}.get(media, "json")


def json_request(body: bytes) -> tuple[dict[str, Any], int]:
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: [[[[...
        raise Refused(400, f'the body is not valid JSON ({exc}); send {{"inputs": [...]}}') from None
    if not isinstance(payload, dict) or "inputs" not in payload:
        raise Refused(400, 'the body must be a JSON object with an "inputs" member')
    top_k = payload.get("top_k", 1)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= 100:
        raise Refused(400, '"top_k" must be a whole number from 1 to 100')
    return payload, top_k


def busy_response() -> bytes:
    """The canned answer to a connection over the cap."""
    body = json.dumps({"error": BUSY + " (api.max_connections)"}).encode()
    return (
        f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nRetry-After: {RETRY_AFTER_S}\r\nConnection: close\r\n\r\n"
    ).encode() + body


def npz_unpacked_bytes(body: bytes) -> int:
    """What the arrays of an .npz body take once read (0 when it is no zip: parsing says why)."""
    try:
        with zipfile.ZipFile(io.BytesIO(body)) as archive:
            return sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return 0


def body_length(headers: Message, form: str, max_body_bytes: int, max_json_body_bytes: int) -> int:
    """The declared body length, or the refusal that leaves the body unread: no length, a bad one,
    or over the limit of its form (JSON has a lower one: parsing it costs a multiple of its size)."""
    length_header = headers.get("Content-Length")
    if headers.get("Transfer-Encoding") or length_header is None:
        raise Refused(411, "send the body with a Content-Length header", close=True)
    try:
        length = int(length_header)
        if length < 0:
            raise ValueError
    except ValueError:
        raise Refused(400, "Content-Length is not a number", close=True) from None
    limit, key = max_body_bytes, "api.max_body_bytes"
    if form == "json" and max_json_body_bytes < limit:
        limit, key = max_json_body_bytes, "api.max_json_body_bytes"
    if length > limit:
        hint = (
            "; send larger inputs as application/octet-stream or application/x-npz" if form == "json" else ""
        )
        raise Refused(
            413, f"the body is {length} bytes; the limit is {limit} ({key}){hint}", "too_large", close=True
        )
    return length
