"""``/api/v1/whoami``: who the presented token belongs to and its role, so that a client (the
dashboard) shows only the actions the token may take. No side effects."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from fleet.api.context import FleetContext, get_context
from fleet.api.security import Viewer
from fleet.auth import Role

router = APIRouter(prefix="/api/v1", tags=["system"])
Context = Annotated[FleetContext, Depends(get_context)]


RoleName = Literal["viewer", "operator", "admin"]
ROLES: dict[Role, RoleName] = {Role.VIEWER: "viewer", Role.OPERATOR: "operator", Role.ADMIN: "admin"}


class WhoAmI(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(description="the token's name; 'anonymous' when the API is open")
    role: RoleName
    open: bool = Field(description="true when the fleet has no operator tokens: anyone may act")


@router.get("/whoami", response_model=WhoAmI)
def whoami(context: Context, who: Viewer) -> WhoAmI:
    """Any valid token (or none when the API is open): its name and role."""
    assert who.role is not None  # Viewer admits operator tokens only, never a device
    return WhoAmI(name=who.name, role=ROLES[who.role], open=not context.tokens)
