"""The device list's HTTP answer: the page's devices as a JSON array (the shape the list always
had), and the paging in headers: X-Total-Count, X-Next-Cursor and an RFC 8288 ``Link: rel=next``.

The rows are encoded once by pydantic_core from plain dicts (``fleet.storage.device_json``); the
OpenAPI document still declares ``list[DeviceView]``, which the contract tests hold them to."""

from __future__ import annotations

from typing import Any

from fastapi import Request, Response
from pydantic_core import to_json

from fleet.storage.device_page import DevicePage
from fleet.views import DeviceView

TOTAL_HEADER = "X-Total-Count"
NEXT_HEADER = "X-Next-Cursor"

LIST_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "model": list[DeviceView],
        "description": "the page's devices, in the requested order",
        "headers": {
            TOTAL_HEADER: {
                "description": "devices matching the filters, on every page",
                "schema": {"type": "integer", "minimum": 0},
            },
            NEXT_HEADER: {
                "description": "pass as cursor for the next page; absent on the last page",
                "schema": {"type": "string"},
            },
            "Link": {
                "description": 'the next page\'s URL as <...>; rel="next"; absent on the last page',
                "schema": {"type": "string"},
            },
        },
    }
}


def page_response(request: Request, page: DevicePage) -> Response:
    headers = {TOTAL_HEADER: str(page.total)}
    if page.next_cursor is not None:
        headers[NEXT_HEADER] = page.next_cursor
        following = request.url.include_query_params(cursor=page.next_cursor)
        # Relative to the request (RFC 8288 allows it): right behind a proxy that rewrites the host.
        headers["Link"] = f'<{following.path}?{following.query}>; rel="next"'
    return Response(content=to_json(page.devices), media_type="application/json", headers=headers)
