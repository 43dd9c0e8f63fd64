"""``/api/v1/deployments``: assign a model to one device or to the fleet, and notify devices."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from starlette.concurrency import run_in_threadpool

from fleet.api.audit import Audit
from fleet.api.context import FleetContext, get_context
from fleet.api.security import Operator
from fleet.deploy import deploy
from fleet.views import DeploymentRequest, DeploymentResult

router = APIRouter(prefix="/api/v1/deployments", tags=["deployments"])
Context = Annotated[FleetContext, Depends(get_context)]


@router.post("", response_model=DeploymentResult)
async def create_deployment(
    body: DeploymentRequest, context: Context, who: Operator, audit: Audit
) -> DeploymentResult:
    """``device_id`` null sets the fleet-wide default; per-device assignments override it."""
    result = await run_in_threadpool(
        lambda: deploy(
            context.engine,
            context.link,
            context.topics,
            name=body.name,
            version=body.version,
            device_id=body.device_id,
        )
    )
    detail = {"device_id": body.device_id}
    await run_in_threadpool(audit.record, who, "deploy", f"{body.name} {body.version}", detail)
    return result
