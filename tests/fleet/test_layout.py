"""The fleet's rooms: storage at the bottom (no imports from the layers above it, all SQL inside
it), and one metrics table that everything about telemetry is made from."""

from __future__ import annotations

import ast
from datetime import UTC, datetime
from pathlib import Path

from fleet.storage.metrics import HOURLY_COLUMNS, METRICS
from fleet.storage.schema import telemetry, telemetry_hourly
from fleet.storage.series import SERIES_COLUMNS
from fleet.summary import device_health, homeassistant_configs
from fleet.views import DeviceView, TelemetrySummary

FLEET = Path(__file__).resolve().parents[2] / "fleet"
ABOVE_STORAGE = (
    "fleet.ingest",
    "fleet.rollouts",
    "fleet.alerts",
    "fleet.summary",
    "fleet.api",
    "fleet.server",
)


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_storage_imports_nothing_above_it() -> None:
    offenders = {
        f"{path.relative_to(FLEET)}: {module}"
        for path in (FLEET / "storage").rglob("*.py")
        for module in _imports(path)
        if module.startswith(ABOVE_STORAGE)
    }
    assert offenders == set()


def test_sql_lives_in_storage() -> None:
    outside = {
        f"{path.relative_to(FLEET)}: {module}"
        for path in FLEET.rglob("*.py")
        if "storage" not in path.relative_to(FLEET).parts
        for module in _imports(path)
        if module.startswith("sqlalchemy") and module != "sqlalchemy.exc"
    }
    # Outside storage only the Engine/Connection types are named, never a table or a statement.
    for path in FLEET.rglob("*.py"):
        if "storage" in path.relative_to(FLEET).parts:
            continue
        assert "fleet.storage.schema" not in _imports(path), path
    assert all(line.endswith(": sqlalchemy") for line in outside), outside


def test_every_metric_reaches_every_place() -> None:
    for metric in METRICS:
        assert metric.name in telemetry.c, metric.name
        assert metric.name in TelemetrySummary.model_fields, metric.name
        if metric.series is not None:
            assert metric.series in SERIES_COLUMNS, metric.series
    for _metric, _rollup, column in HOURLY_COLUMNS:
        assert column in telemetry_hourly.c, column
    now = datetime.now(UTC)
    window = TelemetrySummary(window_end=now, **{m.name: 1 if m.integer else 1.5 for m in METRICS})
    device = DeviceView(
        device_id="pi-1",
        presence="online",
        last_seen=now,
        first_seen=now,
        agent_version=None,
        runtime=None,
        model=None,
        desired=None,
        update_state=None,
        telemetry=window,
    )
    document = device_health(device)
    for metric in METRICS:
        if metric.health:
            assert document[metric.name] == (1 if metric.integer else 1.5), metric.name
    sensors = {m.name for m in METRICS if m.sensor is not None} | {"presence"}
    topics = homeassistant_configs("pi-1", "edgefleet/v1/fleet/devices/pi-1/health")
    assert {topic.split("/")[-2] for topic in topics} == sensors
