"""The agent configuration the agent's tests start from, rendered by ``edgefleet.agent_toml``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgefleet.agent_toml import Settings, agent_settings, merged, render_agent_toml
from tests.support.agent import DEVICE

TEST_SETTINGS: Settings = {
    "fleet": {"poll_interval_s": 300, "timeout_s": 5},
    "mqtt": {"keepalive_s": 5},
    "telemetry": {"interval_s": 300},
    "runtime": {"kind": "tflite-runtime", "threads": 1},
    "update": {"probation_s": 0, "health_check_interval_s": 0.2, "retry_base_s": 0.05},
}
"""Slow timers (a test triggers the poll or the window it needs), no probation, fast update retries
and a short keepalive (a dead broker is noticed within seconds)."""


def config_toml(  # noqa: PLR0913 - one keyword-only parameter per agent.toml field tests vary
    state_dir: Path,
    trusted: Path,
    fleet_url: str,
    *,
    mqtt_port: int = 1,
    api_port: int = 0,
    poll_interval_s: float = 300,
    telemetry_interval_s: float = 300,
    device_id: str = DEVICE,
    probation_s: float = 0,
    settings: Mapping[str, Any] | None = None,
) -> str:
    """An ``agent.toml`` with ``TEST_SETTINGS``; ``settings`` are laid over it last, e.g.
    ``{"update": {"max_latency_factor": 2}}``.

    ``mqtt_port=1`` means no broker (the agent keeps retrying while the test looks at other
    things); ``api_port=0`` lets the agent pick a free port.
    """
    base = agent_settings(device_id, state_dir, [trusted], fleet_url, mqtt_port=mqtt_port, api_port=api_port)
    chosen = {
        "fleet": {"poll_interval_s": poll_interval_s},
        "telemetry": {"interval_s": telemetry_interval_s},
        "update": {"probation_s": probation_s},
    }
    return render_agent_toml(merged(base, TEST_SETTINGS, chosen, settings or {}))
