"""Health, ingester counters and dead letters."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from fleet.api.context import FleetContext, get_context
from fleet.storage import repository
from fleet.views import DeadLetterRow, IngestStats

router = APIRouter(prefix="/api/v1", tags=["system"])
Context = Annotated[FleetContext, Depends(get_context)]


@router.get("/health")
def health() -> dict[str, bool]:
    return {"ok": True}


@router.get("/stats", response_model=IngestStats)
def stats(context: Context) -> IngestStats:
    """Ingester counters since the server started: received, stored, dead-lettered by reason."""
    return context.link.stats()


@router.get("/dead-letters", response_model=list[DeadLetterRow])
def dead_letters(context: Context, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[DeadLetterRow]:
    with context.engine.begin() as conn:
        return repository.list_dead_letters(conn, limit)
