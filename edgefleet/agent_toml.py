"""Render an agent's ``agent.toml``: the one renderer the demo, the process helpers, the benchmarks
and the tests use.

Settings are plain nested mappings shaped like the file (top-level keys, then one table per
section: ``{"mqtt": {"port": 1883}}``); ``tomli_w`` writes them, so quoting and escaping are the
library's job and a path with a quote or backslash in it still yields valid TOML.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import tomli_w

Settings = dict[str, Any]


def agent_settings(
    device_id: str,
    state_dir: Path,
    trusted_keys: Sequence[Path],
    fleet_url: str,
    *,
    mqtt_port: int,
    api_port: int,
    host: str = "127.0.0.1",
) -> Settings:
    """The keys every agent started on this machine needs: identity, state, keys, fleet, broker, API."""
    return {
        "device_id": device_id,
        "state_dir": state_dir,
        "trusted_keys": list(trusted_keys),
        "fleet": {"url": fleet_url},
        "mqtt": {"host": host, "port": mqtt_port},
        "api": {"host": host, "port": api_port},
    }


def merged(base: Mapping[str, Any], *overrides: Mapping[str, Any]) -> Settings:
    """``base`` with each override applied in turn; tables merge key by key, values replace."""
    result: Settings = dict(base)
    for override in overrides:
        for key, value in override.items():
            current = result.get(key)
            if isinstance(value, Mapping) and isinstance(current, Mapping):
                result[key] = merged(current, value)
            else:
                result[key] = value
    return result


def render_agent_toml(settings: Mapping[str, Any]) -> str:
    """The TOML text of ``settings`` (``Path`` values become strings; ``None`` values are left out,
    as TOML has no null and the agent then uses its default)."""
    return tomli_w.dumps(_plain(settings))


def write_agent_toml(path: Path, settings: Mapping[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_agent_toml(settings))
    return path


def _plain(settings: Mapping[str, Any]) -> Settings:
    return {key: _value(value) for key, value in settings.items() if value is not None}


def _value(value: Any) -> Any:
    if isinstance(value, Mapping):
        return _plain(value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list | tuple):
        return [_value(item) for item in value]
    return value
