"""Every read and write of the fleet database, in one place for callers: functions take a Connection
and callers own the transaction. Each job lives in its own module; this re-exports them.
"""

from __future__ import annotations

from fleet.storage.alerts import list_alerts, rollbacks_since
from fleet.storage.desired import (
    clear_desired,
    desired_for,
    device_ids_following,
    models_allowed_for,
    set_desired,
)
from fleet.storage.devices import (
    device_secret_hash,
    get_device,
    list_devices,
    list_events,
    list_telemetry,
    upsert_device_meta,
)
from fleet.storage.identity import (
    Credentials,
    delete_device,
    device_credentials,
    revoke_device,
    revoked_among,
    set_secret,
)
from fleet.storage.ingest import (
    expire_dead_letters,
    list_dead_letters,
    store_batch,
    store_dead_letter,
    store_decoded,
)
from fleet.storage.models import (
    delete_model,
    get_model,
    get_model_detail,
    get_model_path,
    insert_model,
    list_models,
    model_in_use,
)
from fleet.storage.records import Assignment, DeadLetter, Decoded, NewModel
from fleet.storage.schema import FLEET_DEFAULT
from fleet.storage.series import SERIES_COLUMNS, telemetry_series
from fleet.storage.summary import summarize
from fleet.storage.times import now, utc

__all__ = [
    "FLEET_DEFAULT",
    "SERIES_COLUMNS",
    "Assignment",
    "Credentials",
    "DeadLetter",
    "Decoded",
    "NewModel",
    "clear_desired",
    "delete_device",
    "delete_model",
    "desired_for",
    "device_credentials",
    "device_ids_following",
    "device_secret_hash",
    "expire_dead_letters",
    "get_device",
    "get_model",
    "get_model_detail",
    "get_model_path",
    "insert_model",
    "list_alerts",
    "list_dead_letters",
    "list_devices",
    "list_events",
    "list_models",
    "list_telemetry",
    "model_in_use",
    "models_allowed_for",
    "now",
    "revoke_device",
    "revoked_among",
    "rollbacks_since",
    "set_desired",
    "set_secret",
    "store_batch",
    "store_dead_letter",
    "store_decoded",
    "summarize",
    "telemetry_series",
    "upsert_device_meta",
    "utc",
]
