"""Assemble the FastAPI app from its routers; the ingester and the database are injected."""

from __future__ import annotations

from fastapi import FastAPI

from edgefleet import __version__
from fleet.api import deployments, devices, errors, metrics, models, rollouts, system, web
from fleet.api.context import FleetContext


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
    for module in (system, models, deployments, devices, rollouts, metrics, web):
        app.include_router(module.router)
    return app
