"""Health, ingester counters and dead letters."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from fleet.alerts import list_alerts
from fleet.api.context import FleetContext, get_context
from fleet.api.security import Viewer
from fleet.leader import ClusterView, LeaderElector, cluster_view
from fleet.names import DB_INT_MAX
from fleet.storage import repository
from fleet.storage.alerts import AlertState
from fleet.storage.labels import labels_in_use
from fleet.storage.times import now
from fleet.summary import fleet_at_a_glance
from fleet.views import AlertView, DeadLetterRow, FleetSummary, IngestStats, LabelsInUse

router = APIRouter(prefix="/api/v1", tags=["system"])
Context = Annotated[FleetContext, Depends(get_context)]


@router.get("/health")
def health() -> dict[str, bool]:
    return {"ok": True}


@router.get("/stats", response_model=IngestStats)
def stats(context: Context, _who: Viewer) -> IngestStats:
    """Ingester counters since the server started: received, stored, dead-lettered by reason."""
    return context.link.stats()


@router.get("/cluster", response_model=ClusterView)
def cluster(context: Context, _who: Viewer, request: Request) -> ClusterView:
    """Which worker leads (runs rollouts, alerts, summary and retention), and whether this one does."""
    elector = getattr(request.app.state, "leader", None)
    return cluster_view(context.engine, elector if isinstance(elector, LeaderElector) else None, now())


@router.get("/dead-letters", response_model=list[DeadLetterRow])
def dead_letters(
    context: Context, _who: Viewer, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> list[DeadLetterRow]:
    with context.engine.begin() as conn:
        return repository.list_dead_letters(conn, limit)


@router.get("/alerts", response_model=list[AlertView])
def get_alerts(
    context: Context,
    _who: Viewer,
    state: Annotated[AlertState, Query(description="open, closed (the history) or all")] = AlertState.ALL,
    open_only: Annotated[bool, Query(alias="open", description="same as state=open")] = False,
    before: Annotated[int | None, Query(ge=1, le=DB_INT_MAX, description="page on: ids below this")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> list[AlertView]:
    """Newest first; ``?state=open`` (or ``?open=true``) for the open ones, ``?state=closed`` for the
    history."""
    return list_alerts(context.engine, AlertState.OPEN if open_only else state, limit, before)


@router.get("/summary", response_model=FleetSummary)
def get_summary(context: Context, _who: Viewer) -> FleetSummary:
    """The same document as the retained ``fleet/summary`` topic."""
    return fleet_at_a_glance(context.engine)


@router.get("/labels", response_model=LabelsInUse)
def get_labels(context: Context, _who: Viewer) -> LabelsInUse:
    """The groups and tags given to devices: the choices of the device list's group and tag filters."""
    with context.engine.begin() as conn:
        groups, tags = labels_in_use(conn)
    return LabelsInUse(groups=groups, tags=tags)
