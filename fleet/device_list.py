"""What ``GET /api/v1/devices`` takes: a page size, a cursor, filters and a sort order; and the
opaque cursor it hands back (the sort and the last row's sort key, base64url JSON)."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from fleet.errors import FleetError
from fleet.names import DeviceId, Label, ModelName, SemVer
from fleet.views import DeviceState

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
CURSOR_VERSION = 1


class BadCursorError(FleetError):
    """A ``cursor`` this fleet did not hand out, or one handed out for another sort order (400)."""


class DeviceSort(StrEnum):
    """``device_id`` orders are stable while devices come and go: a walk sees each device that
    existed when it began exactly once. ``last_seen`` orders move a device that reports mid-walk."""

    DEVICE_ID = "device_id"
    DEVICE_ID_DESC = "-device_id"
    LAST_SEEN = "last_seen"
    LAST_SEEN_DESC = "-last_seen"

    @property
    def by_last_seen(self) -> bool:
        return self in (DeviceSort.LAST_SEEN, DeviceSort.LAST_SEEN_DESC)


Search = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[\x20-\x7e]+$")]
CursorText = Annotated[str, StringConstraints(min_length=1, max_length=512, pattern=r"^[A-Za-z0-9_-]+$")]


class DeviceListQuery(BaseModel):
    """The query string of the device list; unknown parameters are ignored, as everywhere."""

    model_config = ConfigDict(frozen=True)

    limit: int = Field(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT, description="devices per page")
    cursor: CursorText | None = Field(
        None, description="the previous page's X-Next-Cursor (with the same sort); omit for the first page"
    )
    sort: DeviceSort = Field(
        DeviceSort.DEVICE_ID,
        description="device_id, -device_id, last_seen or -last_seen (never-seen devices last)",
    )
    q: Search | None = Field(None, description="the device id contains this (any case)")
    group: Label | None = None
    tag: Label | None = None
    presence: Literal["online", "offline", "unknown"] | None = None
    state: DeviceState | None = None
    model: ModelName | None = Field(None, description="serves a model of this name")
    version: SemVer | None = Field(None, description="serves this model version")


class SortKey(BaseModel):
    """Where a page ended: ``seen`` False for a device that never reported (after every seen one
    in the ``last_seen`` orders, where it has no ``last_seen``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device_id: DeviceId  # a forged cursor reaches the query only with a well-formed id
    seen: bool = True
    last_seen: datetime | None = None


class _Cursor(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Literal[1]
    sort: DeviceSort
    after: SortKey


def encode_cursor(sort: DeviceSort, after: SortKey) -> str:
    raw = _Cursor(v=CURSOR_VERSION, sort=sort, after=after).model_dump_json(exclude_none=True)
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(text: str, sort: DeviceSort) -> SortKey:
    """The sort key a cursor carries; BadCursorError (400) when it was not made by
    ``encode_cursor`` or was made for another ``sort``."""
    try:
        raw: Any = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        cursor = _Cursor.model_validate(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise BadCursorError(
            "cursor: not a cursor this fleet handed out; pass the X-Next-Cursor of the previous page "
            "as it is, or omit cursor for the first page"
        ) from exc
    if cursor.sort is not sort:
        raise BadCursorError(
            f"cursor: it continues a list sorted by {cursor.sort.value}, not by {sort.value}; "
            "keep the sort while following cursors, or omit cursor to start again"
        )
    if sort.by_last_seen and cursor.after.seen and cursor.after.last_seen is None:
        raise BadCursorError("cursor: a last_seen cursor without a last_seen; omit cursor to start again")
    return cursor.after
