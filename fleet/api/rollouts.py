"""``/api/v1/rollouts``: start a gated rollout, watch it, pause, resume, abort or roll it back."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path
from starlette.concurrency import run_in_threadpool

from fleet.api.audit import Audit
from fleet.api.context import FleetContext, get_context
from fleet.api.security import Operator, Viewer
from fleet.names import DB_INT_MAX
from fleet.rollout_spec import RolloutAction, RolloutDeviceView, RolloutRequest, RolloutView

router = APIRouter(prefix="/api/v1/rollouts", tags=["rollouts"])
Context = Annotated[FleetContext, Depends(get_context)]
RolloutId = Annotated[int, Path(ge=1, le=DB_INT_MAX, description="a rollout id")]


@router.post("", status_code=201, response_model=RolloutView)
async def start_rollout(body: RolloutRequest, context: Context, who: Operator, audit: Audit) -> RolloutView:
    """Wave 1 is assigned at once; later waves follow when the gates pass after each soak."""
    view = await run_in_threadpool(context.controller().start, body, who.name)
    target = f"rollout {view.id}"
    detail = {"model": f"{body.name} {body.version}"}
    await run_in_threadpool(audit.record, who, "rollout.start", target, detail)
    return view


@router.get("", response_model=list[RolloutView])
def list_rollouts(context: Context, _who: Viewer) -> list[RolloutView]:
    return context.controller().all()


@router.get("/{rollout_id}", response_model=RolloutView)
def get_rollout(rollout_id: RolloutId, context: Context, _who: Viewer) -> RolloutView:
    return context.controller().get(rollout_id)


@router.get("/{rollout_id}/devices", response_model=list[RolloutDeviceView])
def get_rollout_devices(rollout_id: RolloutId, context: Context, _who: Viewer) -> list[RolloutDeviceView]:
    """Every targeted device's state: pending, installing, probation, done, failed, skipped-offline
    or skipped-incompatible, since when and why."""
    return context.controller().devices(rollout_id)


def _action(name: str) -> None:
    def endpoint(
        rollout_id: RolloutId,
        context: Context,
        who: Operator,
        audit: Audit,
        body: RolloutAction | None = None,
    ) -> RolloutView:
        reason = body.reason if body is not None and body.reason else f"{name} by {who.name}"
        method = getattr(context.controller(), name)
        result: RolloutView = method(rollout_id, reason)
        audit.record(who, f"rollout.{name}", f"rollout {rollout_id}", {"reason": reason})
        return result

    endpoint.__name__ = f"{name}_rollout"
    router.post(
        f"/{{rollout_id}}/{name}", response_model=RolloutView, summary=f"{name.capitalize()} a rollout"
    )(endpoint)


for _name in ("pause", "resume", "abort", "rollback"):
    _action(_name)
