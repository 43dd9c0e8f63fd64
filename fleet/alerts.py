"""Alert rules from config -> alert records, a retained MQTT topic and an optional webhook.

``AlertEngine.evaluate()`` runs from the fleet's maintenance loop with an injected clock. Each run
judges every telemetry window stored since the previous run, in order (not only each device's
newest; where the previous run stopped is a row, ``alert_cursor``, as that run may have been another
worker's), then the conditions that depend on the time (silence, hold times) at ``now``. A rule must
hold for its ``for_s`` before its alert opens, and an open alert resolves only once the value is at
or below ``resolve_at`` for ``resolve_for_s`` (hysteresis). While a device installs a model or is on
probation its window rules and silence are not judged (an install restarts the serving process).
Open alerts are rows, and so are the conditions whose hold time runs (``alert_pending``, read at
the start of each run and written at its end), so a new leader continues a hold where the previous
one left it. With a fencing token (``evaluate(fence)``) a worker that lost the lease writes nothing.
"""

from __future__ import annotations

import json
import logging
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from sqlalchemy import Connection, Engine

from fleet.alert_findings import describe, window_values
from fleet.alert_webhook import Job, Post, RetryPolicy, WebhookSender, post_json
from fleet.deploy import Publisher, connection_generation, was_refused
from fleet.errors import FleetError
from fleet.storage import alert_cursor, alert_pending
from fleet.storage import alerts as store
from fleet.storage.alert_windows import Windows
from fleet.storage.leases import Fence, check_fence
from fleet.storage.records import FailedUpdate, Finding
from fleet.views import AlertView
from protocol.topics import Topics
from protocol.update_state import UpdateState

log = logging.getLogger(__name__)

RuleName = Literal[
    "offline",
    "latency_p95",
    "error_rate",
    "drift_psi",
    "out_of_range_share",
    "input_drift",
    "stuck_features",
    "output_drift",
    "low_confidence_share",
]
THRESHOLDS: dict[str, str] = {
    "offline": "offline_minutes",
    "latency_p95": "latency_p95_ms",
    "error_rate": "error_rate",
    "drift_psi": "drift_psi",
    "out_of_range_share": "out_of_range_share",
    "input_drift": "input_drift",
    "stuck_features": "stuck_features",
    "output_drift": "output_drift",
    "low_confidence_share": "low_confidence_share",
}
UPDATING = frozenset(
    {
        UpdateState.DOWNLOAD,
        UpdateState.VERIFY,
        UpdateState.STAGE,
        UpdateState.SMOKE,
        UpdateState.ACTIVATE,
        UpdateState.PROBATION,
    }
)
"""Update states during which a device's alerts are suppressed (installing, or on probation)."""
WINDOW_PAGE = 2000
MAX_WINDOWS_PER_RUN = 100_000
"""A backlog beyond this is judged over the next runs, so one run stays bounded."""


class RuleHold(BaseModel):
    """Timing of one rule: hold before opening, hysteresis before resolving."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    for_s: float = Field(0, ge=0, description="the condition must hold this long before the alert opens")
    resolve_at: float | None = Field(
        None, ge=0, description="resolve only at or below this value (default: the rule's threshold)"
    )
    resolve_for_s: float = Field(0, ge=0, description="and only once the value stayed there this long")


class AlertRules(BaseModel):
    """Thresholds; ``null`` turns a rule off."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    offline_minutes: float | None = Field(10, gt=0, description="device offline (or silent) longer than this")
    latency_p95_ms: float | None = Field(None, gt=0, description="a window's p95 latency above this")
    drift_psi: float | None = Field(
        None,
        ge=0,
        description="a window's drift PSI above this (no sample-size rule: noisy in small windows)",
    )
    out_of_range_share: float | None = Field(
        0.3, ge=0, le=1, description="a window's share of inputs outside the baseline's range above this"
    )
    input_drift: float | None = Field(
        5.0, ge=0, description="a window's input-feature drift significance (-log10 p, corrected) above this"
    )
    stuck_features: float | None = Field(
        0, ge=0, description="more than this many input features stuck at one value over a window"
    )
    output_drift: float | None = Field(
        4.0, ge=0, description="a window's output drift significance (-log10 p of the chi-square) above this"
    )
    low_confidence_share: float | None = Field(
        None,
        ge=0,
        le=1,
        description="a window's share of predictions under the confidence threshold above this",
    )
    error_rate: float | None = Field(0.05, ge=0, le=1, description="a window's failed share above this")
    rollback: bool = Field(True, description="an agent rolled a model back")
    rollback_hold_minutes: float = Field(60, gt=0, description="how long a rollback alert stays open")
    hold: dict[RuleName, RuleHold] = Field(
        default_factory=dict, description="per rule: for_s, resolve_at, resolve_for_s (TOML [hold.RULE])"
    )
    suppress_during_update: bool = Field(
        True, description="do not judge a device while it installs a model or is on probation"
    )
    webhook_url: str | None = Field(None, description="POST each opened/resolved alert here as JSON")
    webhook_timeout_s: float = Field(5, gt=0, description="one attempt's timeout")
    webhook_attempts: int = Field(5, ge=1, le=20, description="attempts per delivery before giving up")
    webhook_backoff_s: float = Field(1, gt=0, description="wait after the first failure; doubles")
    webhook_backoff_max_s: float = Field(60, gt=0, description="longest wait between attempts")

    @model_validator(mode="after")
    def _hysteresis(self) -> AlertRules:
        for rule, hold in self.hold.items():
            threshold = getattr(self, THRESHOLDS[rule])
            if hold.resolve_at is not None and threshold is not None and hold.resolve_at > threshold:
                raise ValueError(
                    f"hold.{rule}.resolve_at {hold.resolve_at} is above the rule's threshold {threshold}: "
                    "an alert must resolve at or below the value that opens it"
                )
        return self

    def threshold(self, rule: str) -> float | None:
        value: float | None = getattr(self, THRESHOLDS[rule])
        return value

    def timing(self, rule: str) -> RuleHold:
        for name, hold in self.hold.items():
            if name == rule:
                return hold
        return RuleHold()

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(
            self.webhook_attempts, self.webhook_backoff_s, self.webhook_backoff_max_s, self.webhook_timeout_s
        )


def alerts_topic(topics: Topics) -> str:
    """Retained: every open alert, as JSON."""
    return topics.fleet_alerts


def load_rules(path: Path) -> AlertRules:
    """Alert rules from a TOML file (the AlertRules fields at top level, ``[hold.RULE]`` tables)."""
    try:
        data = tomllib.loads(path.read_text())
        return AlertRules.model_validate(data)
    except OSError as exc:
        raise FleetError(f"cannot read alert rules {path}: {exc.strerror or exc}") from exc
    except (tomllib.TOMLDecodeError, ValidationError) as exc:
        raise FleetError(f"alert rules {path}: {exc}") from exc


def list_alerts(
    engine: Engine, state: store.AlertState, limit: int = 200, before_id: int | None = None
) -> list[AlertView]:
    with engine.begin() as conn:
        return store.list_alerts(conn, state, limit, before_id)


@dataclass
class Track:
    """One (rule, device) condition between runs."""

    value: float | None = None
    pending_since: datetime | None = None
    clearing_since: datetime | None = None


class AlertEngine:
    def __init__(
        self,
        engine: Engine,
        publisher: Publisher,
        topic: str,
        rules: AlertRules,
        *,
        clock: Callable[[], datetime],
        post: Post = post_json,
        sleep: Callable[[float], object] | None = None,
        webhook_in_background: bool = True,
    ) -> None:
        self.engine = engine
        self.publisher = publisher
        self.topic = topic
        self.rules = rules
        self.clock = clock
        self.webhooks = WebhookSender(engine, clock, post=post, sleep=sleep, background=webhook_in_background)
        self._published: str | None = None
        self._generation: int | None = None
        self._tracks: dict[tuple[str, str], Track] = {}

    def evaluate(self, fence: Fence | None = None) -> tuple[list[AlertView], list[AlertView]]:
        """Judge new windows and the time-bound rules; returns (opened, resolved). Publishes and posts.
        ``fence``: the elected worker's token; StaleLeaderError (nothing written) once it lost the lease."""
        now = self.clock()
        with self.engine.begin() as conn:
            if fence is not None:
                check_fence(conn, fence)  # first: a stale leader reads nothing and moves no cursor
            held = alert_pending.load(conn)
            self._restore(held)
            run = _Run(self, store.open_alert_ids(conn), store.device_states(conn))
            start = alert_cursor.load(conn)
            windows = Windows(start, WINDOW_PAGE, MAX_WINDOWS_PER_RUN)
            for window in windows.read(conn):
                run.window(window)
            run.at_now(now)
            since = now - timedelta(minutes=self.rules.rollback_hold_minutes)
            run.rollbacks(store.rollbacks_since(conn, since) if self.rules.rollback else [], now)
            run.close_orphans(now)
            opened, resolved = run.apply(conn)
            alert_pending.save(conn, held, self._holding())
            if start is None or windows.position != start.window_id:  # moves only if all lands
                alert_cursor.save(conn, windows.position, now)
        for alert in opened:
            log.warning("alert opened: %s", alert.message)
        self._publish()
        self._post(opened, resolved)
        return opened, resolved

    def _restore(self, held: dict[alert_pending.Key, alert_pending.Holding]) -> None:
        """The stored hold times are the truth (another worker may have led since this one's last
        run); values this worker saw stay, a stored one fills in for a condition it never saw."""
        for key, track in self._tracks.items():
            stored = held.get(key)
            track.pending_since = stored.pending_since if stored else None
            track.clearing_since = stored.clearing_since if stored else None
        for key, stored in held.items():
            if key not in self._tracks:
                self._tracks[key] = Track(stored.value, stored.pending_since, stored.clearing_since)

    def _holding(self) -> dict[alert_pending.Key, alert_pending.Holding]:
        return {
            key: alert_pending.Holding(track.value, track.pending_since, track.clearing_since)
            for key, track in self._tracks.items()
            if track.pending_since is not None or track.clearing_since is not None
        }

    def _post(self, opened: list[AlertView], resolved: list[AlertView]) -> None:
        url = self.rules.webhook_url
        if not url:
            return
        policy = self.rules.retry_policy()
        for event, batch in (("opened", opened), ("resolved", resolved)):
            for alert in batch:
                body = {"state": event, "alert": alert.model_dump(mode="json")}
                self.webhooks.submit(Job(alert.id, event, url, body, policy))

    def _publish(self) -> None:
        if (generation := connection_generation(self.publisher)) != self._generation:  # reconnected: resend
            self._published, self._generation = None, generation
        open_alerts = [a.model_dump(mode="json") for a in list_alerts(self.engine, store.AlertState.OPEN)]
        payload = json.dumps({"open": len(open_alerts), "alerts": open_alerts}, sort_keys=True)
        changed = payload != self._published or was_refused(self.publisher, self.topic)
        if changed and self.publisher.publish(self.topic, payload.encode(), qos=1, retain=True):
            self._published = payload


class _Run:
    """One evaluation: steps each (rule, device) condition through its observations, in time order,
    and collects the alerts to open and resolve (written at the end, in the caller's transaction)."""

    def __init__(
        self,
        engine: AlertEngine,
        current: dict[tuple[str, str | None], int],
        devices: list[store.DeviceCondition],
    ) -> None:
        self.rules = engine.rules
        # Looked up once per run, not per observation (~100,000 per run at 10,000 devices).
        self.thresholds = {rule: engine.rules.threshold(rule) for rule in THRESHOLDS}
        self.timings = {rule: engine.rules.timing(rule) for rule in THRESHOLDS}
        self.tracks = engine._tracks
        self.current = current
        self.devices = {d.device_id: d for d in devices}
        self.opening: dict[tuple[str, str], tuple[Finding, datetime]] = {}
        self.resolving: dict[int, datetime] = {}
        self.opening_closed: list[tuple[Finding, datetime, datetime]] = []
        self.firing = {key for key in current if key[1] is not None}

    def suppressed(self, device_id: str) -> bool:
        device = self.devices.get(device_id)
        return bool(
            self.rules.suppress_during_update and device is not None and device.update_state in UPDATING
        )

    def window(self, window: store.WindowObs) -> None:
        for rule, value in window_values(window).items():
            self.observe(rule, window.device_id, value, window.received_at)

    def at_now(self, now: datetime) -> None:
        """Silence, and each window rule's last value again at ``now`` (so hold times elapse)."""
        for device in self.devices.values():
            minutes = (now - device.last_seen).total_seconds() / 60
            self.observe("offline", device.device_id, minutes, now)
        for (rule, device_id), track in list(self.tracks.items()):
            if rule != "offline" and device_id in self.devices and not self._settled(rule, device_id, track):
                self.observe(rule, device_id, track.value, now)

    def _settled(self, rule: str, device_id: str, track: Track) -> bool:
        """Observing the same value again changes nothing: not firing, no hold running, and the rule
        off, no value, or one at or below the threshold (most of a calm fleet's conditions)."""
        if track.pending_since or track.clearing_since or (rule, device_id) in self.firing:
            return False
        threshold = self.thresholds.get(rule)
        return threshold is None or track.value is None or track.value <= threshold

    def observe(self, rule: str, device_id: str, value: float | None, at: datetime) -> None:
        key = (rule, device_id)
        threshold = self.thresholds.get(rule)
        track = self.tracks.setdefault(key, Track())
        track.value = value
        if threshold is None or value is None or self.suppressed(device_id):
            track.pending_since = track.clearing_since = None  # not judged: nothing may build up
            return
        timing = self.timings.get(rule) or RuleHold()
        if key not in self.firing:
            track.clearing_since = None
            if value <= threshold:
                track.pending_since = None
                return
            track.pending_since = track.pending_since or at
            if (at - track.pending_since).total_seconds() >= timing.for_s:
                track.pending_since = None
                self.firing.add(key)
                self.opening[key] = (describe(rule, device_id, value, threshold), at)
            return
        resolve_at = timing.resolve_at if timing.resolve_at is not None else threshold
        if value > resolve_at:
            track.clearing_since = None
            return
        track.clearing_since = track.clearing_since or at
        if (at - track.clearing_since).total_seconds() >= timing.resolve_for_s:
            track.clearing_since = None
            self.firing.discard(key)
            self._resolve(key, at)

    def _resolve(self, key: tuple[str, str], at: datetime) -> None:
        if key in self.opening:  # opened and resolved within this run: keep both ends as history
            finding, opened_at = self.opening.pop(key)
            self.opening_closed.append((finding, opened_at, at))
        elif key in self.current:
            self.resolving[self.current[key]] = at

    def rollbacks(self, rows: list[FailedUpdate], now: datetime) -> None:
        wanted = {row.device_id: row for row in rows}
        for device_id, row in wanted.items():
            key = ("rollback", device_id)
            if key not in self.current:
                message = f"{device_id} rolled back {row.target_version}: {row.reason or 'no reason given'}"
                self.opening[key] = (Finding("rollback", device_id, "critical", message, None), now)
        for (rule, owner), alert_id in self.current.items():
            if rule == "rollback" and owner not in wanted:
                self.resolving[alert_id] = now

    def close_orphans(self, now: datetime) -> None:
        """Open alerts nothing judges any more: the rule was turned off, the device was deleted."""
        for (rule, device_id), alert_id in self.current.items():
            if rule == "rollback" or alert_id in self.resolving:
                continue
            gone = device_id is None or device_id not in self.devices
            if gone or rule not in THRESHOLDS or self.rules.threshold(rule) is None:
                self.resolving[alert_id] = now

    def apply(self, conn: Connection) -> tuple[list[AlertView], list[AlertView]]:
        opened = store.open_many(conn, list(self.opening.values()))
        resolved = [store.resolve_alert(conn, alert_id, at) for alert_id, at in self.resolving.items()]
        for finding, opened_at, resolved_at in self.opening_closed:
            alert = store.open_alert(conn, finding, opened_at)
            opened.append(alert)
            resolved.append(store.resolve_alert(conn, alert.id, resolved_at))
        return opened, resolved
