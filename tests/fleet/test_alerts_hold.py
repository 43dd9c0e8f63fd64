"""Alert rules over time, driven by an injected clock (no sleeping): every window judged, ``for`` hold,
resolve hysteresis, suppression during an install, history in the API, and webhook retries against a
real local HTTP receiver that fails the first N times."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from sqlalchemy import Engine

from fleet.alerts import AlertEngine, AlertRules, RuleHold
from fleet.storage import create_engine_for_url
from fleet.storage.alerts import list_deliveries
from fleet.storage.ingest import store_decoded
from fleet.storage.records import Decoded
from protocol.messages import DeviceStatus, LatencySummary, Presence, ResourceUsage, TelemetryWindow
from protocol.schema import ModelRef
from tests.support.fleet import FakeLink, InProcessFleet

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
MODEL = ModelRef(name="digits", version="1.0.0")


@dataclass
class Clock:
    now: datetime = T0

    def __call__(self) -> datetime:
        return self.now

    def at(self, seconds: float) -> datetime:
        self.now = T0 + timedelta(seconds=seconds)
        return self.now


@dataclass
class Fleet:
    engine: Engine
    clock: Clock
    seq: dict[str, int] = field(default_factory=dict)

    def status(self, device_id: str, update_state: str | None = None) -> None:
        message = DeviceStatus(
            device_id=device_id,
            presence=Presence.ONLINE,
            ts=self.clock.now,
            agent_version="0.1.0",
            model=MODEL,
            update_state=update_state,
        )
        with self.engine.begin() as conn:
            store_decoded(conn, Decoded(message, self.clock.now))

    def window(self, device_id: str, errors: int) -> None:
        """A window of 120 requests with ``errors`` failed, received now."""
        seq = self.seq.get(device_id, 0)
        self.seq[device_id] = seq + 1
        now = self.clock.now
        message = TelemetryWindow(
            device_id=device_id,
            seq=seq,
            window_start=now - timedelta(seconds=10),
            window_end=now,
            model=MODEL,
            requests=120,
            errors={"inference": errors} if errors else {},
            latency_ms=LatencySummary(p50=1, p95=2, p99=3, max=4),
            resources=ResourceUsage(
                cpu_percent=1, process_rss_bytes=1, memory_used_percent=1, memory_available_bytes=1
            ),
            uptime_s=1,
        )
        with self.engine.begin() as conn:
            store_decoded(conn, Decoded(message, now))


@pytest.fixture
def fleet(db_url: str) -> Iterator[Fleet]:
    engine = create_engine_for_url(db_url)
    yield Fleet(engine, Clock())
    engine.dispose()


def engine_for(fleet: Fleet, rules: AlertRules, **kwargs: Any) -> AlertEngine:
    return AlertEngine(fleet.engine, FakeLink(), "fleet/alerts", rules, clock=fleet.clock, **kwargs)


ERRORS_ONLY = {"offline_minutes": None, "drift_psi": None, "error_rate": 0.05}


def test_every_window_since_the_last_run_is_judged(fleet: Fleet) -> None:
    alerts = engine_for(fleet, AlertRules(**ERRORS_ONLY))
    fleet.status("cam-1")
    assert alerts.evaluate() == ([], [])
    # Three windows between two runs; only the middle one is bad, and the newest is fine.
    for second, errors in ((10, 0), (20, 12), (30, 0)):
        fleet.clock.at(second)
        fleet.window("cam-1", errors)
    opened, resolved = alerts.evaluate()
    assert [(a.rule, a.opened_at, a.value) for a in opened] == [
        ("error_rate", T0 + timedelta(seconds=20), 0.1)
    ]
    assert [(a.id, a.resolved_at) for a in resolved] == [(opened[0].id, T0 + timedelta(seconds=30))]


def test_for_hold_then_resolve_hysteresis(fleet: Fleet) -> None:
    hold = RuleHold(for_s=120, resolve_at=0.02, resolve_for_s=60)
    alerts = engine_for(fleet, AlertRules(**ERRORS_ONLY, hold={"error_rate": hold}))
    fleet.status("cam-1")
    alerts.evaluate()
    # A bad window, then a good one 30 s later: the condition broke before its 120 s, nothing opens.
    fleet.clock.at(0)
    fleet.window("cam-1", 12)
    fleet.clock.at(30)
    fleet.window("cam-1", 0)
    fleet.clock.at(200)
    assert alerts.evaluate() == ([], [])
    # Bad from 300 s on: pending at 360 s, open at 420 s (120 s after it started to hold).
    fleet.clock.at(300)
    fleet.window("cam-1", 12)
    fleet.clock.at(360)
    fleet.window("cam-1", 12)
    assert alerts.evaluate() == ([], [])
    fleet.clock.at(420)
    opened, _ = alerts.evaluate()
    assert [(a.rule, a.opened_at) for a in opened] == [("error_rate", fleet.clock.now)]
    # 3 % is under the 5 % threshold but above resolve_at 2 %: stays open.
    fleet.clock.at(430)
    fleet.window("cam-1", 4)
    fleet.clock.at(600)
    assert alerts.evaluate() == ([], [])
    # 1 %: resolves once it stayed there 60 s.
    fleet.clock.at(610)
    fleet.window("cam-1", 1)
    fleet.clock.at(650)
    assert alerts.evaluate() == ([], [])
    fleet.clock.at(671)
    _, resolved = alerts.evaluate()
    assert [(a.id, a.resolved_at) for a in resolved] == [(opened[0].id, T0 + timedelta(seconds=671))]


def test_no_alert_while_installing_or_on_probation(fleet: Fleet) -> None:
    rules = AlertRules(drift_psi=None, error_rate=0.05, offline_minutes=1)
    alerts = engine_for(fleet, rules)
    fleet.status("cam-1", update_state="probation")
    fleet.window("cam-1", 60)  # the first minutes of a new model: errors, then a restart's silence
    fleet.clock.at(600)
    assert alerts.evaluate() == ([], [])
    fleet.status("cam-1", update_state="commit")
    fleet.window("cam-1", 60)
    opened, _ = alerts.evaluate()
    assert [a.rule for a in opened] == ["error_rate"]
    assert not rules.model_copy(update={"suppress_during_update": False}).suppress_during_update


def test_resolve_at_above_the_threshold_is_refused() -> None:
    with pytest.raises(
        ValueError, match=r"hold.error_rate.resolve_at 0.1 is above the rule's threshold 0.05"
    ):
        AlertRules(error_rate=0.05, hold={"error_rate": RuleHold(resolve_at=0.1)})


def test_history_in_the_api(api: InProcessFleet) -> None:
    fleet = Fleet(api.context.engine, Clock())
    alerts = engine_for(fleet, AlertRules(**ERRORS_ONLY))
    fleet.status("cam-1")
    alerts.evaluate()
    for second, errors in ((10, 12), (20, 0), (30, 12)):
        fleet.clock.at(second)
        fleet.window("cam-1", errors)
    alerts.evaluate()  # one alert opened and closed, then one opened again
    closed = api.client.get("/api/v1/alerts?state=closed").json()
    still = api.client.get("/api/v1/alerts?state=open").json()
    both = api.client.get("/api/v1/alerts?state=all").json()
    assert [a["resolved_at"] is not None for a in closed] == [True]
    assert [a["resolved_at"] for a in still] == [None]
    assert {a["id"] for a in both} == {closed[0]["id"], still[0]["id"]}
    assert api.client.get("/api/v1/alerts?state=gone").status_code in (400, 422)


class FlakyReceiver:
    """A real HTTP receiver that answers ``status`` to the first ``failures`` POSTs, then 204."""

    def __init__(self, failures: int, status: int = 503) -> None:
        self.failures = failures
        self.bodies: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                outer.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(status if len(outer.bodies) <= outer.failures else 204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize(
    ("failures", "status", "attempts", "delivered", "waits"),
    [
        (2, 503, 3, True, [2.0, 4.0]),  # two failures, delivered at the third attempt
        (9, 503, 4, False, [2.0, 4.0, 5.0]),  # never answered well: gives up after 4, waits capped at 5 s
        (9, 400, 1, False, []),  # refused: retrying cannot help
    ],
)
def test_webhook_retries_with_backoff_and_records_the_outcome(
    fleet: Fleet, failures: int, status: int, attempts: int, delivered: bool, waits: list[float]
) -> None:
    receiver = FlakyReceiver(failures, status)
    slept: list[float] = []
    rules = AlertRules(
        **ERRORS_ONLY,
        webhook_url=receiver.url,
        webhook_attempts=4,
        webhook_backoff_s=2,
        webhook_backoff_max_s=5,
    )
    alerts = engine_for(fleet, rules, sleep=slept.append, webhook_in_background=False)
    try:
        fleet.status("cam-1")
        fleet.window("cam-1", 12)
        opened, _ = alerts.evaluate()
    finally:
        receiver.close()
    assert len(receiver.bodies) == attempts
    assert {b["state"] for b in receiver.bodies} == {"opened"}
    assert slept == waits
    with fleet.engine.begin() as conn:
        [row] = list_deliveries(conn, opened[0].id)
    assert (row["event"], row["attempts"], row["delivered"]) == ("opened", attempts, delivered)
    assert row["error"] == (None if delivered else f"HTTP {status}")
