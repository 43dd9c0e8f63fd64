"""The device's HTTP Basic credentials for the fleet API, sent only to the fleet's own origin.

A desired state may point a bundle URL at another host (an object store): the device secret
must never travel there, so credentials are attached per request by origin, not per session.
"""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import requests

FleetCredentials = tuple[str, str]


def same_origin(url: str, base: str) -> bool:
    a, b = urlsplit(url), urlsplit(base)
    return (a.scheme, a.hostname, a.port) == (b.scheme, b.hostname, b.port)


def basic_header(credentials: FleetCredentials) -> str:
    user, secret = credentials
    return "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode("ascii")


def attach(session: requests.Session, fleet_url: str, credentials: FleetCredentials | None) -> None:
    """Make ``session`` send the credentials on requests to the fleet's origin, and nowhere else."""
    if credentials is None:
        return
    header = basic_header(credentials)

    def add_auth(request: Any) -> Any:
        if same_origin(request.url, fleet_url):
            request.headers["Authorization"] = header
        return request

    session.auth = add_auth
