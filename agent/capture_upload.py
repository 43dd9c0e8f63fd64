"""Upload captured samples to the fleet: ``POST {fleet}/api/v1/capture``, gzip-compressed JSON.

The same HTTP rules as the desired-state request (``agent.update.fleet_http``): urllib in the
serving process (no requests here), the device's HTTP Basic credentials, the fleet's certificate
checked against ``[fleet] ca_file``, and a redirect followed only within the fleet's origin.
"""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass

from agent.errors import AgentError
from agent.update.fleet_auth import FleetCredentials, basic_header
from agent.update.fleet_http import _SameOriginRedirects
from protocol.capture import CaptureReceipt

MAX_ANSWER_BYTES = 64 * 1024


class UploadError(AgentError):
    """An upload did not reach the fleet, or the fleet could not store it now: try again later."""


class UploadRefused(UploadError):  # noqa: N818 - reads as what happened, like the other errors here
    """The fleet refused the batch itself (4xx other than auth and rate limits): sending it
    again would be refused again."""


@dataclass(frozen=True)
class CaptureUploader:
    fleet_url: str
    credentials: FleetCredentials | None
    timeout_s: float
    context: ssl.SSLContext | None
    user_agent: str

    @property
    def url(self) -> str:
        return f"{self.fleet_url.rstrip('/')}/api/v1/capture"

    def send(self, compressed: bytes) -> CaptureReceipt:
        """POST one batch (gzip-compressed JSON); the fleet's receipt, or UploadError."""
        handlers: list[urllib.request.BaseHandler] = [_SameOriginRedirects(self.fleet_url)]
        if self.context is not None:
            handlers.append(urllib.request.HTTPSHandler(context=self.context))
        headers = {
            "User-Agent": self.user_agent,
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
        }
        if self.credentials is not None:
            headers["Authorization"] = basic_header(self.credentials)
        request = urllib.request.Request(self.url, data=compressed, headers=headers, method="POST")
        try:
            with urllib.request.build_opener(*handlers).open(request, timeout=self.timeout_s) as response:
                answer: bytes = response.read(MAX_ANSWER_BYTES)
        except urllib.error.HTTPError as exc:
            detail = exc.read(2048).decode(errors="replace").strip()
            exc.close()
            message = f"the fleet answered {exc.code} to a capture upload: {detail or exc.reason}"
            if 400 <= exc.code < 500 and exc.code not in (401, 403, 404, 408, 429):
                raise UploadRefused(message) from exc
            raise UploadError(message) from exc
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise UploadError(f"cannot upload captured samples to {self.url}: {exc}") from exc
        except AgentError as exc:  # a redirect to another origin
            raise UploadError(str(exc)) from exc
        try:
            return CaptureReceipt.model_validate_json(answer)
        except ValueError as exc:
            raise UploadError(f"{self.url} answered with something that is not a capture receipt") from exc
