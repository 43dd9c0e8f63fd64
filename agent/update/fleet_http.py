"""HTTP to the fleet: TLS verification and the redirect rule that keeps the device secret home.

The desired state is read with ``urllib`` in the serving process (no requests there); bundles
are downloaded with a ``requests.Session`` in the update worker. Both verify an https:// fleet
against ``[fleet] ca_file`` (unset: the system's CA store), and neither sends the device's
credentials to another origin:

- the desired-state request follows a redirect only within the fleet's origin (scheme, host,
  port); a redirect elsewhere is refused with a ``DownloadError`` before anything is sent there;
- a bundle download may be redirected to another origin (an object store), and requests drops
  the ``Authorization`` header when the host, port or scheme changes (``fleet_auth.attach`` adds
  it only for the fleet's origin in the first place).
"""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request
from http.client import HTTPMessage
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from agent.errors import DownloadError
from agent.tls import client_context, describe_handshake
from agent.update.fleet_auth import FleetCredentials, attach, same_origin

if TYPE_CHECKING:
    import requests
    import requests.adapters

MAX_DESIRED_BYTES = 1024 * 1024


class _SameOriginRedirects(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only to the fleet's own origin."""

    def __init__(self, fleet_url: str) -> None:
        self.fleet_url = fleet_url

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        if not same_origin(newurl, self.fleet_url):
            fp.close()
            raise DownloadError(
                f"the fleet redirected {req.full_url} to {newurl}, another origin: refused, so the "
                "device secret never leaves the fleet's origin; fix [fleet] url to where the fleet is"
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def read_desired(
    url: str,
    *,
    fleet_url: str,
    headers: dict[str, str],
    timeout_s: float,
    context: ssl.SSLContext | None,
) -> bytes:
    """GET the desired-state document (at most 1 MiB). Raises ``DownloadError`` in words."""
    handlers: list[urllib.request.BaseHandler] = [_SameOriginRedirects(fleet_url)]
    if context is not None:
        handlers.append(urllib.request.HTTPSHandler(context=context))
    opener = urllib.request.build_opener(*handlers)
    request = urllib.request.Request(url, headers=headers)
    try:
        with opener.open(request, timeout=timeout_s) as response:
            body: bytes = response.read(MAX_DESIRED_BYTES)
            return body
    except urllib.error.URLError as exc:
        reason = exc.reason if isinstance(exc.reason, BaseException) else None
        if isinstance(reason, ssl.SSLError):
            raise DownloadError(
                f"cannot read the desired state from {url}: {describe_handshake(reason, 'fleet')}"
            ) from exc
        raise DownloadError(f"cannot read the desired state from {url}: {exc}") from exc
    except ssl.SSLError as exc:
        raise DownloadError(
            f"cannot read the desired state from {url}: {describe_handshake(exc, 'fleet')}"
        ) from exc
    except (OSError, ValueError) as exc:
        raise DownloadError(f"cannot read the desired state from {url}: {exc}") from exc


def desired_context(fleet_url: str, ca_file: Path | None) -> ssl.SSLContext | None:
    """The TLS context for an https:// fleet (``TlsFileError`` names a bad ``ca_file``)."""
    if not fleet_url.lower().startswith("https://"):
        return None
    return client_context(purpose="[fleet]", ca_file=ca_file)


def configure_session(
    session: requests.Session,
    fleet_url: str,
    credentials: FleetCredentials | None,
    ca_file: Path | None,
) -> None:
    """Credentials for the fleet's origin only; HTTPS verified against ``ca_file`` (else the
    system's CA store, requests' default)."""
    attach(session, fleet_url, credentials)
    if ca_file is not None:
        if not ca_file.is_file():
            raise DownloadError(f"[fleet] ca_file {ca_file} does not exist (or is not a file)")
        session.mount("https://", _pinned_adapter(str(ca_file)))


def _pinned_adapter(ca_file: str) -> requests.adapters.HTTPAdapter:
    """An adapter that always verifies against ``ca_file``: ``session.verify`` alone loses to a
    ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` in the environment."""
    from requests.adapters import HTTPAdapter

    class PinnedCA(HTTPAdapter):
        def send(self, request: Any, *args: Any, **kwargs: Any) -> Any:
            kwargs["verify"] = ca_file
            return super().send(request, *args, **kwargs)

    return PinnedCA()
