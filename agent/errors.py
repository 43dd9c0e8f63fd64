"""The agent's exception tree. Messages say what went wrong and what to do about it."""

from __future__ import annotations

from protocol.errors import EdgefleetError


class AgentError(EdgefleetError):
    """Root of every error the agent raises on purpose."""


class ConfigError(AgentError):
    """The configuration file is missing, unreadable or invalid."""


class StoreError(AgentError):
    """The state directory or a stored model is unreadable or inconsistent."""


class BadInputError(AgentError):
    """A prediction request the agent cannot accept (HTTP 400)."""


class UpdateError(AgentError):
    """One step of an update failed; the agent keeps (or goes back to) the model that was serving."""


class DownloadError(UpdateError):
    """The desired state or the bundle could not be fetched, or the bundle's sha256 is wrong."""


class VerifyError(UpdateError):
    """The bundle's signature, files or model do not check out."""


class StageError(UpdateError):
    """The bundle could not be extracted into the model store."""


class SmokeTestError(UpdateError):
    """The staged model does not reproduce the converter's recorded outputs."""


class ActivateError(UpdateError):
    """The model could not be made the serving model."""


class HealthCheckError(UpdateError):
    """The new model misbehaved on probation (errors, latency, failed health checks)."""


class UnroutedEventError(AgentError):
    """A bug in the update machine: a handler posted an event its transition table does not route.

    Never a normal failure: it is not turned into a rollback but propagates (with a traceback),
    so the table gets fixed instead of the machine silently stopping in a state.
    """
