"""``/api/v1/models/{name}/{version}/rollback-grants``: keep an operator's signed rollback grant."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi import Path as PathParam

from fleet.api.audit import Audit
from fleet.api.context import FleetContext, get_context
from fleet.api.security import Operator
from fleet.errors import NotFoundError
from fleet.grants import GrantStore
from fleet.names import ModelName, SemVer
from fleet.storage import repository
from protocol.rollback import RollbackGrant, SignedRollbackGrant

router = APIRouter(prefix="/api/v1/models", tags=["models"])
Context = Annotated[FleetContext, Depends(get_context)]
Name = Annotated[ModelName, PathParam(description="model name: lower-case letters, digits, _ . -")]
Version = Annotated[SemVer, PathParam(description="semantic version, e.g. 1.2.0")]


def grant_store(context: FleetContext) -> GrantStore:
    return GrantStore(context.registry.artifacts, context.registry.trusted)


@router.post("/{name}/{version}/rollback-grants", status_code=201, response_model=RollbackGrant)
def add_rollback_grant(
    name: Name, version: Version, body: SignedRollbackGrant, context: Context, who: Operator, audit: Audit
) -> RollbackGrant:
    """Keep a grant made with ``edgefleet model rollback-token``: devices it names may then move
    back to this older model; it travels in their desired state until it expires."""
    with context.engine.begin() as conn:
        if repository.get_model(conn, name, version) is None:
            raise NotFoundError(f"no model {name} {version} in the registry")
    grant = grant_store(context).add(name, version, body)
    audit.record(who, "model.rollback_grant", f"{name} {version}")
    return grant
