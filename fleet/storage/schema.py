"""Tables of the fleet database (SQLAlchemy Core), built by the Alembic migrations in ``migrations/``."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from fleet.storage.metrics import HOURLY_COLUMNS, METRICS, Rollup

metadata = MetaData()


def metric_columns() -> list[Column[Any]]:
    """One column per telemetry metric (``fleet.storage.metrics``), in the table's order."""
    return [Column(m.name, BigInteger if m.integer else Float, nullable=m.nullable) for m in METRICS]


def hourly_columns() -> list[Column[Any]]:
    """The rollup columns: sums of counters (never NULL), averages and maxima of gauges."""
    return [
        Column(name, BigInteger, nullable=False)
        if rollup is Rollup.SUM
        else Column(name, Float, nullable=True)
        for _metric, rollup, name in HOURLY_COLUMNS
    ]


# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets BIGINT ids.
Id = BigInteger().with_variant(Integer(), "sqlite")

FLEET_DEFAULT = "*"
"""The ``desired.target`` of the fleet-wide default; per-device rows override it."""

models = Table(
    "models",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False),
    Column("version", String(128), nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("task", String(32), nullable=False),
    Column("quantization", String(32), nullable=False),
    Column("key_id", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("uploaded_at", DateTime(timezone=True), nullable=False),
    Column("path", Text, nullable=False),
    Column("manifest", JSON, nullable=False),
    UniqueConstraint("name", "version", name="uq_models_name_version"),
)

devices = Table(
    "devices",
    metadata,
    Column("device_id", String(64), primary_key=True),
    Column("presence", String(16), nullable=False),
    Column("status_ts", DateTime(timezone=True), nullable=True),
    Column("first_seen", DateTime(timezone=True), nullable=False),
    Column("last_seen", DateTime(timezone=True), nullable=False),
    Column("agent_version", String(64), nullable=True),
    Column("runtime", String(128), nullable=True),
    Column("model_name", String(64), nullable=True),
    Column("model_version", String(128), nullable=True),
    Column("model_sha256", String(64), nullable=True),
    Column("update_state", String(32), nullable=True),
    # model_* is what the device serves now (its status, or a telemetry window after activation);
    # committed_* what its agent committed. Each carries the device-clock time of the message that
    # set it: an older message (outbox replay, retained status handed over again) changes nothing.
    Column("serving_at", DateTime(timezone=True), nullable=True),
    Column("committed_name", String(64), nullable=True),
    Column("committed_version", String(128), nullable=True),
    Column("committed_sha256", String(64), nullable=True),
    Column("committed_at", DateTime(timezone=True), nullable=True),
    # The device's report on the newest remote config it saw (protocol.remote.ConfigReport).
    Column("config_report", JSON, nullable=True),
    # The device list's last_seen orders page along this index (keyset, see storage.device_page).
    Index("ix_devices_last_seen", "last_seen", "device_id"),
)

desired = Table(
    "desired",
    metadata,
    Column("target", String(64), primary_key=True),  # a device id, or FLEET_DEFAULT
    Column("model_name", String(64), nullable=False),
    Column("model_version", String(128), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

telemetry = Table(
    "telemetry",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("device_id", String(64), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("window_start", DateTime(timezone=True), nullable=False),
    Column("window_end", DateTime(timezone=True), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("model_name", String(64), nullable=True),
    Column("model_version", String(128), nullable=True),
    *metric_columns(),
    Column("payload", JSON, nullable=False),
    # A redelivered window (QoS 1 after a reconnect) is stored once.
    UniqueConstraint("device_id", "seq", "window_start", name="uq_telemetry_window"),
    Index("ix_telemetry_device", "device_id", "id"),
    Index("ix_telemetry_device_window", "device_id", "window_start"),
)

events = Table(
    "events",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("device_id", String(64), nullable=False),
    Column("ts", DateTime(timezone=True), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("update_id", String(128), nullable=False),
    Column("state", String(32), nullable=False),
    Column("ok", Boolean, nullable=False),
    Column("reason", Text, nullable=True),
    Column("target_name", String(64), nullable=False),
    Column("target_version", String(128), nullable=False),
    Column("target_sha256", String(64), nullable=True),
    Column("previous_name", String(64), nullable=True),
    Column("previous_version", String(128), nullable=True),
    Column("payload", JSON, nullable=False),
    UniqueConstraint("device_id", "update_id", "state", "ts", name="uq_events_transition"),
    Index("ix_events_device", "device_id", "id"),
)

dead_letters = Table(
    "dead_letters",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("topic", Text, nullable=False),
    Column("reason", String(32), nullable=False),
    Column("detail", Text, nullable=False),
    Column("payload_prefix", Text, nullable=False),
    Column("payload_size", BigInteger, nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    # sha256 of topic and payload: a retained message (handed over at every subscribe) or a resent
    # one (the fleet died before acknowledging) is recorded once.
    Column("digest", String(64), nullable=True),
    Index("ix_dead_letters_digest", "digest"),
    Index("ix_dead_letters_received", "received_at"),
)

dead_letter_digests = Table(
    "dead_letter_digests",
    metadata,
    # Digests of retained or resent messages already dead-lettered, kept apart from the dead letters
    # (which expire and are capped): a retained message is recorded once, even after its dead letter
    # is gone and the broker hands it over again. Bounded by ``ingest.SEEN_DIGESTS_CAP``.
    Column("digest", String(64), primary_key=True),
    Column("seen_at", DateTime(timezone=True), nullable=False),
    Index("ix_dead_letter_digests_seen", "seen_at"),
)

device_meta = Table(
    "device_meta",
    metadata,
    # Provisioning and labels, kept apart from ``devices`` (which the status messages own).
    Column("device_id", String(64), primary_key=True),
    Column("group_name", String(64), nullable=True),
    Column("tags", JSON, nullable=False),
    Column("secret_hash", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    # Set by ``device revoke``: the secret stays (to tell the device it was revoked) but opens nothing.
    Column("revoked_at", DateTime(timezone=True), nullable=True),
    Index("ix_device_meta_group", "group_name"),
)

telemetry_hourly = Table(
    "telemetry_hourly",
    metadata,
    # Raw windows older than the retention period are folded into one row per device, hour and model.
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("device_id", String(64), nullable=False),
    Column("hour", DateTime(timezone=True), nullable=False),
    Column("model_name", String(64), nullable=False),
    Column("model_version", String(128), nullable=False),
    Column("windows", Integer, nullable=False),
    *hourly_columns(),
    UniqueConstraint("device_id", "hour", "model_name", "model_version", name="uq_telemetry_hourly"),
)

rollouts = Table(
    "rollouts",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("model_name", String(64), nullable=False),
    Column("model_version", String(128), nullable=False),
    Column("target", JSON, nullable=False),
    Column("waves", JSON, nullable=False),
    Column("gates", JSON, nullable=False),
    Column("state", String(16), nullable=False),
    Column("wave", Integer, nullable=False),
    Column("wave_started_at", DateTime(timezone=True), nullable=True),
    Column("reason", Text, nullable=True),
    Column("last_gates", JSON, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("created_by", String(64), nullable=True),
    # Past it, devices still offline are skipped and the rollout may complete without them.
    Column("deadline_at", DateTime(timezone=True), nullable=True),
    # When the last wave passed its gates (the rollout then waits only for returning devices).
    Column("passed_at", DateTime(timezone=True), nullable=True),
)

rollout_devices = Table(
    "rollout_devices",
    metadata,
    # One row per targeted device: its wave, and the assignment it had before (for roll back).
    Column("rollout_id", Id, primary_key=True, autoincrement=False),
    Column("device_id", String(64), primary_key=True),
    Column("wave", Integer, nullable=False),
    Column("had_own", Boolean, nullable=False),
    Column("previous_name", String(64), nullable=True),
    Column("previous_version", String(128), nullable=True),
    Column("assigned_at", DateTime(timezone=True), nullable=True),
    # ``fleet.rollout_spec.DeviceRolloutState``, since when, and why.
    Column("state", String(24), nullable=False, server_default="pending"),
    Column("state_at", DateTime(timezone=True), nullable=True),
    Column("detail", Text, nullable=True),
    Index("ix_rollout_devices_device", "device_id"),
)

alerts = Table(
    "alerts",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("rule", String(64), nullable=False),
    Column("device_id", String(64), nullable=True),
    Column("severity", String(16), nullable=False),
    Column("message", Text, nullable=False),
    Column("value", Float, nullable=True),
    Column("opened_at", DateTime(timezone=True), nullable=False),
    Column("resolved_at", DateTime(timezone=True), nullable=True),
    Index("ix_alerts_open", "rule", "device_id", "resolved_at"),
    Index("ix_alerts_resolved", "resolved_at"),  # the history, newest closed first
)

alert_pending = Table(
    "alert_pending",
    metadata,
    # A (rule, device) condition whose hold time runs: above the threshold and not yet open
    # (pending_since), or open and back under its resolve value (clearing_since). Only such rows
    # exist; a new leader continues their hold times instead of starting them over.
    Column("rule", String(64), primary_key=True),
    Column("device_id", String(64), primary_key=True),
    Column("value", Float, nullable=True),
    Column("pending_since", DateTime(timezone=True), nullable=True),
    Column("clearing_since", DateTime(timezone=True), nullable=True),
)

alert_deliveries = Table(
    "alert_deliveries",
    metadata,
    # One row per webhook delivery of an alert's opening or resolution, after its last attempt.
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("alert_id", Id, nullable=False),
    Column("event", String(16), nullable=False),
    Column("url", Text, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("delivered", Boolean, nullable=False),
    Column("status", Integer, nullable=True),
    Column("error", Text, nullable=True),
    Column("finished_at", DateTime(timezone=True), nullable=False),
    Index("ix_alert_deliveries_alert", "alert_id"),
)

audit_log = Table(
    "audit_log",
    metadata,
    # Who did what to which target, when and from where: one row per successful operator or
    # device-lifecycle action (fleet.api.audit writes them).
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("actor", String(64), nullable=False),
    Column("role", String(16), nullable=True),
    Column("action", String(64), nullable=False),
    Column("target", Text, nullable=True),
    Column("detail", JSON, nullable=True),
    Column("client", String(64), nullable=True),
    Index("ix_audit_log_at", "at"),
    Index("ix_audit_log_actor", "actor", "id"),
    Index("ix_audit_log_action", "action", "id"),
)

rollout_skipped = Table(
    "rollout_skipped",
    metadata,
    # Targeted devices a rollout left out because their reported runtime cannot load its model.
    Column("rollout_id", Id, primary_key=True, autoincrement=False),
    Column("device_id", String(64), primary_key=True),
    Column("runtime", String(128), nullable=True),
    Column("reason", Text, nullable=False),
)

leases = Table(
    "leases",
    metadata,
    # Leader election among fleet workers (``fleet.storage.leases``): one row per elected job.
    Column("name", String(64), primary_key=True),
    Column("holder", String(128), nullable=False),
    Column("term", BigInteger, nullable=False),  # grows by one each time the lease changes hands
    Column("acquired_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
)

device_latest = Table(
    "device_latest",
    metadata,
    # Each device's newest telemetry window, upserted with every insert into ``telemetry``: the
    # device list reads one row per device here instead of looking into the (large) telemetry table.
    Column("device_id", String(64), primary_key=True),
    Column("telemetry_id", BigInteger, nullable=False),
    Column("window_end", DateTime(timezone=True), nullable=False),
    *metric_columns(),
)

device_config = Table(
    "device_config",
    metadata,
    # Remote configuration (protocol.remote.RemoteConfig): a device's own row wins over its group's.
    Column("target", String(80), primary_key=True),  # a device id, or "group:<name>"
    Column("settings", JSON, nullable=False),
    Column("revision", String(64), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

log_requests = Table(
    "log_requests",
    metadata,
    # Remote log requests and, once every chunk arrived, the answer (zlib of the redacted text).
    Column("request_id", String(64), primary_key=True),
    Column("device_id", String(64), nullable=False),
    Column("requested_at", DateTime(timezone=True), nullable=False),
    Column("request", JSON, nullable=False),
    Column("state", String(16), nullable=False),  # pending, done, failed
    Column("completed_at", DateTime(timezone=True), nullable=True),
    Column("lines", Integer, nullable=True),
    Column("truncated", Boolean, nullable=True),
    Column("error", Text, nullable=True),
    Column("body", LargeBinary, nullable=True),
    Index("ix_log_requests_requested", "requested_at"),
)

capture_samples = Table(
    "capture_samples",
    metadata,
    # Instances devices kept for retraining (``fleet.storage.capture``); ``uid`` is the device's id
    # for the sample, stored once however often a batch is sent.
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("uid", String(32), nullable=False),
    Column("device_id", String(64), nullable=False),
    Column("model_name", String(64), nullable=False),
    Column("model_version", String(128), nullable=False),
    Column("model_sha256", String(64), nullable=True),
    Column("reason", String(16), nullable=False),
    Column("captured_at", DateTime(timezone=True), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("raw", Boolean, nullable=False),  # every input in real values (not already quantized)
    Column("data", LargeBinary, nullable=False),  # compressed .npz: in/<name>, out/<name>
    UniqueConstraint("uid", name="uq_capture_samples_uid"),
    Index("ix_capture_samples_model", "model_name", "model_version", "id"),
)

capture_drops = Table(
    "capture_drops",
    metadata,
    # Samples each device's capture store dropped: a running total per store (``stream``).
    Column("device_id", String(64), primary_key=True),
    Column("stream", String(32), primary_key=True),
    Column("dropped", BigInteger, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

capture_policies = Table(
    "capture_policies",
    metadata,
    # The capture policy an operator set: ``target`` is ``device:<id>`` or ``group:<name>``.
    Column("target", String(80), primary_key=True),
    Column("policy", JSON, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)
