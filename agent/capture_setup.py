"""Build the agent's capture (``agent.capture``) and its sender from the configuration."""

from __future__ import annotations

from agent.capture import Capture
from agent.capture_sender import CaptureSender
from agent.capture_upload import CaptureUploader
from agent.config import AgentConfig, fleet_credentials
from agent.update.fleet_http import desired_context

LIVE_KEYS = frozenset({"enabled", "rate", "low_confidence_below", "out_of_range", "drift_above"})
"""``[capture]`` keys a SIGHUP applies; the bounds apply at the next start."""


def build_capture(config: AgentConfig, user_agent: str) -> tuple[Capture, CaptureSender]:
    """The capture, not started; its sender starts with the store (when capture is first on, or
    when samples wait on disk from an earlier run)."""
    uploader = CaptureUploader(
        fleet_url=config.fleet.url,
        credentials=fleet_credentials(config),
        timeout_s=config.fleet.timeout_s,
        context=desired_context(config.fleet.url, config.fleet.ca_file),
        user_agent=user_agent,
    )
    sender = CaptureSender(config.device_id, config.capture, uploader)
    capture = Capture(config.capture, config.state_dir / "capture.sqlite")
    capture.on_store.append(sender.start)
    return capture, sender
