"""The fleet's exception tree. API routers translate it to HTTP statuses in one place."""

from __future__ import annotations

from protocol.errors import EdgefleetError


class FleetError(EdgefleetError):
    """Base class of every error the fleet reports to an operator."""


class NotFoundError(FleetError):
    """A model, device or other record that does not exist."""


class ConflictError(FleetError):
    """A request that contradicts what is stored, e.g. the same model version with other bytes."""


class InvalidBundleError(FleetError):
    """An uploaded bundle that failed verification; the message names the failed check."""


class TooLargeError(FleetError):
    """An upload over the configured size limit."""


class StorageError(FleetError):
    """The database or the artifacts directory cannot be used."""


class FleetUnreachableError(FleetError):
    """The operator CLI cannot reach the fleet's HTTP API."""


class StaleLeaderError(FleetError):
    """A worker that lost the leader lease tried to write as the leader; its write was refused."""
