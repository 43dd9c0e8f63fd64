"""The one updater the update tests build: the agent's own composition, steps in this process.

``build_updater`` goes through ``agent.update.build_updater`` from a parsed agent config (the
tests' ``TEST_SETTINGS``), so the policy, the runner factory and the serving loader are the
agent's; only the heavy steps run in this process, on a real ``requests.Session`` against the
real HTTP peer, instead of a worker process. It then starts up as the agent does.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import requests

from agent.config import AgentConfig, parse_config
from agent.serving import ModelHolder
from agent.store import ModelStore
from agent.telemetry import RequestMetrics
from agent.update import Updater
from agent.update import build_updater as agent_build_updater
from agent.update.faults import NO_FAULTS, Faults
from agent.update.runner import WorkerRunner
from edgefleet.agent_toml import agent_settings, merged
from protocol.messages import UpdateEvent
from tests.support.agent import DEVICE
from tests.support.toml import TEST_SETTINGS

UPDATE_TEST_SETTINGS: Mapping[str, Any] = {"update": {"download_attempts": 4, "retry_base_s": 0.01}}
"""Fast retries: a test that exhausts them gives up after 4 attempts in well under a second."""


def updater_config(
    state_dir: Path, trusted: Path, fleet_url: str, update: Mapping[str, Any] | None = None
) -> AgentConfig:
    """The agent config of the update tests; ``update`` overrides keys of ``[update]``."""
    base = agent_settings(DEVICE, state_dir, [trusted], fleet_url, mqtt_port=1, api_port=0)
    settings = merged(base, TEST_SETTINGS, UPDATE_TEST_SETTINGS, {"update": dict(update or {})})
    return parse_config({k: v for k, v in settings.items() if v is not None}, source="update test")


def build_updater(
    state_dir: Path,
    trusted: Path,
    fleet_url: str,
    events: list[UpdateEvent],
    *,
    metrics: RequestMetrics | None = None,
    update: Mapping[str, Any] | None = None,
    faults: Faults = NO_FAULTS,
    stopping: threading.Event | None = None,
) -> Updater:
    """An updater on ``state_dir`` after the agent's start-up (local resume, model loaded).

    ``events`` receives every update event; ``metrics`` is what the serving side records (the
    probation rules read it); ``stopping`` set means the agent is stopping.
    """
    config = updater_config(state_dir, trusted, fleet_url, update)
    updater = agent_build_updater(
        config,
        ModelStore(state_dir).open(),
        ModelHolder(),
        user_agent="edgefleet-agent/test",
        stopping=stopping or threading.Event(),
        usage=(metrics or RequestMetrics()).usage,
        emit=events.append,
        session=requests.Session(),
        faults=faults,
    )
    updater.start_up()
    return updater


def serving(updater: Updater) -> str | None:
    """The version the updater's serving side answers with, or None without a model."""
    model = updater.holder.current
    return model.manifest.version if model else None


def worker_runner(
    state_dir: Path, trusted_dir: Path, fleet_url: str = "http://127.0.0.1:1", **overrides: Any
) -> WorkerRunner:
    """The agent's worker-process step runner as the tests use it (tflite-runtime, one thread,
    short timeouts); ``overrides`` sets credentials, a CA file or the worker's Python."""
    settings: dict[str, Any] = {
        "fleet_url": fleet_url,
        "device_id": DEVICE,
        "trusted_paths": [trusted_dir],
        "state_dir": state_dir,
        "runtime": "tflite-runtime",
        "threads": 1,
        "timeout_s": 5,
        "user_agent": "test",
        "stopping": threading.Event(),
    }
    return WorkerRunner(**(settings | overrides))
