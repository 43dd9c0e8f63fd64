"""Assemble the FastAPI app from its routers; the ingester and the database are injected."""

from __future__ import annotations

from fastapi import FastAPI

from fleet.api import (
    audit,
    capture,
    deployments,
    devices,
    errors,
    grants,
    identity,
    metrics,
    models,
    openapi,
    remote,
    rollouts,
    session,
    system,
    web,
)
from fleet.api.context import FleetContext
from protocol.version import __version__


def create_app(context: FleetContext) -> FastAPI:
    app = FastAPI(
        title="edgefleet fleet",
        version=__version__,
        docs_url=None,
        redoc_url=None,
        openapi_url="/api/openapi.json",
    )
    app.state.fleet = context
    errors.install(app)
    routers = (
        system,
        session,
        models,
        grants,
        deployments,
        devices,
        identity,
        remote,
        capture,
        rollouts,
        audit,
        metrics,
        web,
    )
    for module in routers:
        app.include_router(module.router)
    openapi.install(app)
    return app
