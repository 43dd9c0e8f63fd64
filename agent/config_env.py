"""``EDGEFLEET_AGENT_*`` environment overrides of the agent's TOML config."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping

from agent.errors import ConfigError

ENV_PREFIX = "EDGEFLEET_AGENT_"


def env_overrides(environ: Mapping[str, str]) -> dict[str, object]:
    """``EDGEFLEET_AGENT_<KEY>`` or ``EDGEFLEET_AGENT_<SECTION>__<KEY>`` -> nested config values.

    A value is read as a TOML value when it parses as one (``8500``, ``true``, ``["a", "b"]``),
    else as a string; an unknown key is reported like one in the file.
    """
    out: dict[str, object] = {}
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or len(name) == len(ENV_PREFIX):
            continue
        path = name[len(ENV_PREFIX) :].lower().split("__")
        try:
            value: object = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        node = out
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{name}: {part} is not a section")
            node = child
        node[path[-1]] = value
    return out


def merge(base: dict[str, object], over: dict[str, object]) -> dict[str, object]:
    merged = dict(base)
    for key, value in over.items():
        current = merged.get(key)
        if isinstance(value, dict) and isinstance(current, dict):
            merged[key] = merge(current, value)
        else:
            merged[key] = value
    return merged
