"""The fleet's HTTP API: one router per resource, assembled by ``fleet.api.app.create_app``."""
