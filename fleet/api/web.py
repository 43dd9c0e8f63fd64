"""The dashboard: static files shipped in ``fleet/web`` (no CDN), served from package data."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import Response

from fleet.errors import NotFoundError

router = APIRouter(tags=["dashboard"], include_in_schema=False)

STATIC = {
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}


def _read(name: str) -> bytes:
    return resources.files("fleet").joinpath("web", name).read_bytes()


@router.get("/")
def index() -> Response:
    return Response(_read("index.html"), media_type="text/html; charset=utf-8")


@router.get("/static/{name}")
def static(name: str) -> Response:
    media = STATIC.get(name)
    if media is None:
        raise NotFoundError(f"no static file {name!r}")
    return Response(_read(name), media_type=media, headers={"Cache-Control": "no-cache"})
