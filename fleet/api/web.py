"""The dashboard: static files shipped in ``fleet/web`` (no CDN), served from package data."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import Response

from fleet.errors import NotFoundError

router = APIRouter(tags=["dashboard"], include_in_schema=False)

JS = "text/javascript; charset=utf-8"
STATIC = {
    # Loaded in this order by index.html: helpers, charts, operator actions, the device list,
    # pages and router.
    "core.js": JS,
    "charts.js": JS,
    "actions.js": JS,
    "remote.js": JS,
    "devices.js": JS,
    "app.js": JS,
    "style.css": "text/css; charset=utf-8",
}


# Scripts only from this fleet: an id or message that slipped into markup could not run. Inline
# style attributes stay allowed (the progress bar's width, the chart legend's colours).
CSP = (
    "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


def _read(name: str) -> bytes:
    return resources.files("fleet").joinpath("web", name).read_bytes()


@router.get("/")
def index() -> Response:
    return Response(
        _read("index.html"), media_type="text/html; charset=utf-8", headers={"Content-Security-Policy": CSP}
    )


@router.get("/static/{name}")
def static(name: str) -> Response:
    media = STATIC.get(name)
    if media is None:
        raise NotFoundError(f"no static file {name!r}")
    return Response(_read(name), media_type=media, headers={"Cache-Control": "no-cache"})
