"""``GET /api/v1/devices``: keyset pages, filters, sorts and refusals, through real HTTP against a
fleet on a SQLite file and on PostgreSQL; the rows the list encodes itself hold to ``DeviceView``."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests
from alembic import command
from sqlalchemy import Engine, event, insert, select, update

from fleet.__main__ import main as fleet_main
from fleet.device_list import DeviceListQuery
from fleet.storage import create_engine_for_url, repository
from fleet.storage.device_page import page_rows
from fleet.storage.device_tags import device_tags
from fleet.storage.metrics import METRIC_NAMES
from fleet.storage.migrate import alembic_config
from fleet.storage.schema import FLEET_DEFAULT, device_latest, device_meta, devices
from tests.support.fleet import RunningFleet

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def engine(fleet: RunningFleet) -> Iterator[Engine]:
    """The running fleet's own database, to lay out many devices at once."""
    engine = create_engine_for_url(fleet.config.db_url)
    yield engine
    engine.dispose()


def reported(engine: Engine, ids: list[str], **columns: Any) -> None:
    """Devices as the ingest leaves them after a status: a ``devices`` row each."""
    rows = []
    for n, device_id in enumerate(ids):
        row: dict[str, Any] = {
            "device_id": device_id,
            "presence": "online",
            "first_seen": NOW - timedelta(days=1),
            "last_seen": NOW - timedelta(seconds=n % 5),  # ties: the id breaks them
            "agent_version": "0.1.0",
            "model_name": "digits",
            "model_version": "1.0.0",
        }
        rows.append({**row, **columns})
    with engine.begin() as conn:
        conn.execute(insert(devices), rows)


def provision(fleet: RunningFleet, device_id: str, **labels: Any) -> None:
    answer = fleet.post("/api/v1/devices", json={"device_id": device_id, **labels})
    assert answer.status_code == 201, answer.text


def page(fleet: RunningFleet, **params: Any) -> requests.Response:
    answer = fleet.get("/api/v1/devices", params=params)
    assert answer.status_code == 200, answer.text
    return answer


def walk(fleet: RunningFleet, between: Any = None, **params: Any) -> tuple[list[str], list[int]]:
    """Every page's ids in order and each page's X-Total-Count; ``between(n)`` runs after page n."""
    ids: list[str] = []
    totals: list[int] = []
    cursor = None
    while True:
        answer = page(fleet, **params, **({"cursor": cursor} if cursor else {}))
        ids += [d["device_id"] for d in answer.json()]
        totals.append(int(answer.headers["X-Total-Count"]))
        cursor = answer.headers.get("X-Next-Cursor")
        if cursor is None:
            assert "Link" not in answer.headers
            return ids, totals
        link = answer.headers["Link"]
        assert link.endswith('; rel="next"') and f"cursor={cursor}" in link
        if between is not None:
            between(len(totals))


def test_a_walk_sees_every_device_once_while_devices_are_added(fleet: RunningFleet, engine: Engine) -> None:
    start = [f"m-{n:03d}" for n in range(120)]
    reported(engine, start[:100])
    for device_id in start[100:]:  # provisioned, never reported: the list's second source
        provision(fleet, device_id)

    def add(n: int) -> None:
        # Before the walk's position, after it, and a provisioned device that now reports.
        reported(engine, [f"a-{n:03d}", f"z-{n:03d}"])
        if n == 2:
            reported(engine, ["m-110"])

    ids, totals = walk(fleet, add, limit=17)
    assert len(ids) == len(set(ids)), "a device on two pages"
    assert set(start) <= set(ids), sorted(set(start) - set(ids))
    assert ids == sorted(ids)
    added_later = {f"z-{n:03d}" for n in range(1, len(totals))}
    assert added_later <= set(ids)  # devices added past the position are reached
    assert totals[0] == 120 and totals == sorted(totals) and totals[-1] == 120 + 2 * (len(totals) - 1)

    backwards, _ = walk(fleet, None, limit=33, sort="-device_id")
    assert backwards == sorted(backwards, reverse=True)
    assert len(backwards) == len(set(backwards)) == totals[-1]


def test_last_seen_orders_put_never_seen_devices_last(fleet: RunningFleet, engine: Engine) -> None:
    reported(engine, [f"d-{n:02d}" for n in range(23)])
    for device_id in ("new-b", "new-a"):
        provision(fleet, device_id)
    oldest_first, _ = walk(fleet, limit=4, sort="last_seen")
    newest_first, _ = walk(fleet, limit=4, sort="-last_seen")
    listed = {d["device_id"]: d for d in page(fleet, limit=100).json()}
    seen = sorted((listed[i]["last_seen"], i) for i in listed if listed[i]["last_seen"])
    assert oldest_first == [i for _, i in seen] + ["new-a", "new-b"]
    assert newest_first == [i for _, i in reversed(seen)] + ["new-b", "new-a"]


def test_filters_narrow_the_list_and_the_total(fleet: RunningFleet, engine: Engine) -> None:
    reported(engine, ["cam-1", "cam-2", "Cam_3"])
    reported(engine, ["gate-1"], presence="offline", model_name="gates", model_version="2.0.0")
    reported(engine, ["gate-2"], model_version="2.0.0")
    provision(fleet, "cam-9", group="lab", tags=["indoor"])
    for device_id, group, tags in (("cam-1", "lab", ["indoor", "north"]), ("gate-1", "yard", ["north"])):
        answer = requests.patch(
            f"{fleet.url}/api/v1/devices/{device_id}", json={"group": group, "tags": tags}, timeout=10
        )
        assert answer.ok, answer.text
    with engine.begin() as conn:
        repository.revoke_device(conn, "gate-1", NOW)

    def ids(**params: Any) -> list[str]:
        answer = page(fleet, **params)
        found = [d["device_id"] for d in answer.json()]
        assert int(answer.headers["X-Total-Count"]) == len(found)
        return found

    assert ids(group="lab") == ["cam-1", "cam-9"]
    assert ids(tag="north") == ["cam-1", "gate-1"]
    assert ids(tag="indoor", group="lab") == ["cam-1", "cam-9"]
    assert ids(presence="offline") == ["gate-1"]
    assert ids(presence="unknown") == ["cam-9"]
    assert ids(state="provisioned") == ["cam-9"]
    assert ids(state="revoked") == ["gate-1"]
    # (sorted here: where "Cam_3" falls depends on the database's collation)
    assert sorted(ids(state="active", presence="online")) == ["Cam_3", "cam-1", "cam-2", "gate-2"]
    assert ids(model="gates") == ["gate-1"]
    assert ids(version="2.0.0") == ["gate-1", "gate-2"]
    assert ids(model="digits", version="2.0.0") == ["gate-2"]
    assert sorted(ids(q="CAM")) == ["Cam_3", "cam-1", "cam-2", "cam-9"]  # any case
    assert ids(q="m_") == ["Cam_3"]  # _ and % are the text itself, not wildcards
    assert ids(q="%") == []
    assert ids(tag="nowhere") == [] and ids(group="lab", model="gates") == []
    labels = fleet.json("/api/v1/labels")
    assert labels == {"groups": ["lab", "yard"], "tags": ["indoor", "north"]}


@pytest.mark.parametrize(
    ("query", "status", "words"),
    [
        ("limit=0", 422, "limit"),
        ("limit=1001", 422, "limit"),
        ("limit=ten", 422, "limit"),
        ("sort=newest", 422, "sort"),
        ("presence=asleep", 422, "presence"),
        ("state=gone", 422, "state"),
        ("tag=" + quote("two words"), 422, "tag"),
        ("cursor=" + quote("not/base64!"), 422, "cursor"),
        ("cursor=abc", 400, "not a cursor this fleet handed out"),
        ("cursor=eyJ2IjoxfQ", 400, "not a cursor this fleet handed out"),  # {"v":1}
        ("q=" + quote("a\x00b"), 400, "control character"),
    ],
)
def test_bad_paging_and_filters_are_refused_with_a_reason(
    fleet: RunningFleet, query: str, status: int, words: str
) -> None:
    answer = fleet.get(f"/api/v1/devices?{query}")
    assert answer.status_code == status, answer.text
    assert words in answer.json()["detail"]


def test_a_cursor_belongs_to_its_sort(fleet: RunningFleet, engine: Engine) -> None:
    reported(engine, ["a", "b", "c"])
    cursor = page(fleet, limit=1).headers["X-Next-Cursor"]
    answer = fleet.get("/api/v1/devices", params={"cursor": cursor, "sort": "-last_seen"})
    assert answer.status_code == 400
    assert "sorted by device_id, not by -last_seen" in answer.json()["detail"]
    assert [d["device_id"] for d in page(fleet, cursor=cursor).json()] == ["b", "c"]


def test_listed_rows_are_the_device_views(fleet: RunningFleet, engine: Engine) -> None:
    """The list encodes its rows without building ``DeviceView``: each must equal what the one-device
    endpoint (which does) answers, with a window, assignments, a revocation and a never-seen device."""
    committed = {"committed_name": "digits", "committed_version": "0.9.0", "update_state": "commit"}
    reported(engine, ["pi-1", "pi-2"], **committed)
    provision(fleet, "pi-3", group="g", tags=["b", "a"])
    provision(fleet, "pi-4")
    metrics = {name: n * 1.5 for n, name in enumerate(METRIC_NAMES)}
    metrics.update(requests=600, errors=2, process_rss_bytes=52_428_800, stuck_features=1)
    with engine.begin() as conn:
        window = {"device_id": "pi-1", "telemetry_id": 7, "window_end": NOW, **metrics}
        conn.execute(insert(device_latest).values(**window))
        repository.set_desired(conn, FLEET_DEFAULT, "digits", "1.0.0")
        repository.set_desired(conn, "pi-2", "digits", "2.0.0")
        repository.revoke_device(conn, "pi-4", NOW)
        refused = {"revision": "a" * 64, "outcome": "refused", "reason": "telemetry.interval_s: too small",
                   "applied_revision": "b" * 64, "ts": "2026-12-01T12:00:00Z"}  # fmt: skip
        conn.execute(update(devices).where(devices.c.device_id == "pi-2").values(config_report=refused))
    listed = page(fleet).json()
    assert [d["device_id"] for d in listed] == ["pi-1", "pi-2", "pi-3", "pi-4"]
    for device in listed:
        assert device == fleet.json(f"/api/v1/devices/{device['device_id']}")
    assert listed[0]["telemetry"]["requests"] == 600 and listed[0]["telemetry"]["window_end"].endswith("Z")
    assert [d["state"] for d in listed] == ["active", "active", "provisioned", "revoked"]
    assert [d["desired"]["version"] for d in listed] == ["1.0.0", "2.0.0", "1.0.0", "1.0.0"]
    assert [d["config"] and d["config"]["outcome"] for d in listed] == [None, "refused", None, None]


def test_the_cli_lists_every_page_and_passes_the_filters(
    fleet: RunningFleet, engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    reported(engine, [f"pi-{n:04d}" for n in range(1203)])  # two requests of 1,000
    provision(fleet, "lab-1", group="lab")
    code = fleet_main(["device", "list", "--fleet", fleet.url])
    out = capsys.readouterr().out.splitlines()
    assert code == 0 and len(out) == 1 + 1204 and out[1].startswith("lab-1") and out[-1].startswith("pi-1202")
    code = fleet_main(["device", "list", "--fleet", fleet.url, "--search", "PI-00", "--reverse"])
    out = capsys.readouterr().out.splitlines()
    assert code == 0 and [line.split()[0] for line in out[1:3]] == ["pi-0099", "pi-0098"] and len(out) == 101
    code = fleet_main(["device", "list", "--fleet", fleet.url, "--group", "lab", "--limit", "5"])
    out = capsys.readouterr().out.splitlines()
    assert code == 0 and [line.split()[0] for line in out[1:]] == ["lab-1"]
    code = fleet_main(["device", "list", "--fleet", fleet.url, "--limit", "1001"])
    assert code == 0 and len(capsys.readouterr().out.splitlines()) == 1 + 1001
    code = fleet_main(["device", "list", "--fleet", fleet.url, "--limit", "0"])
    assert code != 0 and "--limit must be at least 1" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("params", "index"),
    [
        ({}, "sqlite_autoindex_devices_1"),
        ({"sort": "-device_id", "presence": "online"}, "sqlite_autoindex_devices_1"),
        ({"sort": "-last_seen"}, "ix_devices_last_seen"),
        ({"sort": "last_seen", "presence": "online"}, "ix_devices_last_seen"),
    ],
)
def test_a_page_reads_devices_along_an_index_without_sorting(
    tmp_path: Path, params: dict[str, Any], index: str
) -> None:
    """SQLite's plan of each page statement: ``devices`` along the index of the order, the other
    tables by key, no sort of the fleet, no telemetry."""
    engine = create_engine_for_url(f"sqlite:///{tmp_path / 'fleet.db'}")
    reported(engine, [f"d-{n:03d}" for n in range(300)])
    statements: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.lstrip().startswith("SELECT"):
            statements.append((statement, parameters))

    with engine.begin() as conn:
        event.listen(engine, "before_cursor_execute", record)
        rows, total, cursor = page_rows(conn, DeviceListQuery(limit=50, **params))
        assert total == 300
        event.remove(engine, "before_cursor_execute", record)
        assert len(rows) == 50 and cursor is not None
        pages = [(s, p) for s, p in statements if "count(" not in s]
        assert pages
        for statement, parameters in pages:
            explained = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)
            plan = " | ".join(row[-1] for row in explained)
            assert f"devices USING INDEX {index}" in plan or f"USING COVERING INDEX {index}" in plan, plan
            assert "telemetry" not in plan, plan
            # At most one sort: the last step, merging the two sources' pages (<= 2 x 51 rows).
            inner = plan.removesuffix(" | SCAN anon_1 | USE TEMP B-TREE FOR ORDER BY")
            assert "TEMP B-TREE" not in inner, plan
    engine.dispose()


def tag_rows(engine: Engine) -> set[tuple[str, str]]:
    with engine.connect() as conn:
        return {(row.device_id, row.tag) for row in conn.execute(select(device_tags))}


def test_the_tag_filter_follows_every_change_of_tags(fleet: RunningFleet, engine: Engine) -> None:
    """Provisioning, PATCH, re-tagging and deleting keep the tag rows the filter reads in step with
    the tags a device shows."""
    reported(engine, ["t-1", "t-2"])
    provision(fleet, "t-3", tags=["cam", "north"])

    def retag(device_id: str, **labels: Any) -> None:
        answer = requests.patch(f"{fleet.url}/api/v1/devices/{device_id}", json=labels, timeout=10)
        assert answer.ok, answer.text

    def ids(tag: str) -> list[str]:
        answer = page(fleet, tag=tag)
        found = [d["device_id"] for d in answer.json()]
        assert int(answer.headers["X-Total-Count"]) == len(found)
        assert all(tag in d["tags"] for d in answer.json())
        return found

    retag("t-1", tags=["cam", "cam", "indoor"])  # a repeat is one tag
    retag("t-2", tags=["indoor"])
    assert ids("cam") == ["t-1", "t-3"] and ids("indoor") == ["t-1", "t-2"]
    retag("t-1", tags=["north"])  # re-tagged: "cam" and "indoor" are gone
    assert ids("cam") == ["t-3"] and ids("indoor") == ["t-2"] and ids("north") == ["t-1", "t-3"]
    retag("t-2", group="lab")  # tags left as they are
    assert ids("indoor") == ["t-2"]
    retag("t-2", tags=[])
    assert ids("indoor") == []
    answer = requests.delete(f"{fleet.url}/api/v1/devices/t-3", timeout=10)
    assert answer.ok, answer.text
    assert ids("cam") == [] and ids("north") == ["t-1"]
    assert tag_rows(engine) == {("t-1", "north")}
    assert fleet.json("/api/v1/labels")["tags"] == ["north"]
    provision(fleet, "t-3", tags=["cam"])  # added again: only its new tags
    assert ids("cam") == ["t-3"] and ids("north") == ["t-1"]


def test_the_migration_fills_the_tag_rows_of_an_existing_database(db_url: str) -> None:
    """A fleet at 0015 with tagged devices: upgraded, each tag is a row and the filter finds it."""
    engine = create_engine_for_url(db_url, create_schema=False)
    try:
        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), "0015_device_list")
            conn.execute(
                insert(device_meta),
                [
                    {"device_id": "a", "tags": ["cam", "north"], "created_at": NOW},
                    {"device_id": "b", "tags": ["cam"], "created_at": NOW},
                    {"device_id": "c", "tags": [], "created_at": NOW},
                ],
            )
        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), "head")
        assert tag_rows(engine) == {("a", "cam"), ("a", "north"), ("b", "cam")}
        with engine.begin() as conn:
            repository.set_secret(conn, "a", "x")  # provisioned: listed before any status
            rows, total, _ = page_rows(conn, DeviceListQuery(tag="north"))
        assert [row.device_id for row in rows] == ["a"] and total == 1
    finally:
        engine.dispose()


@pytest.mark.parametrize("sort", ["device_id", "-last_seen"])
def test_a_tag_page_reads_the_tag_index(tmp_path: Path, sort: str) -> None:
    """SQLite's plan of a tag page and its count: the tag's range of ``ix_device_tags_tag``, never a
    JSON scan of every device."""
    engine = create_engine_for_url(f"sqlite:///{tmp_path / 'fleet.db'}")
    ids = [f"d-{n:03d}" for n in range(300)]
    reported(engine, ids)
    with engine.begin() as conn:
        for n, device_id in enumerate(ids):
            repository.upsert_device_meta(conn, device_id, now=NOW, tags=["cam"] if n % 3 else ["gate"])
    statements: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.lstrip().startswith("SELECT"):
            statements.append((statement, parameters))

    with engine.begin() as conn:
        event.listen(engine, "before_cursor_execute", record)
        rows, total, _ = page_rows(conn, DeviceListQuery(limit=50, tag="gate", sort=sort))
        event.remove(engine, "before_cursor_execute", record)
        assert total == 100 and len(rows) == 50
        assert all(int(row.device_id[2:]) % 3 == 0 for row in rows)  # the "gate" devices
        assert statements
        for statement, parameters in statements:
            explained = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)
            plan = " | ".join(row[-1] for row in explained)
            assert "json_each" not in plan, plan
            assert "SEARCH device_tags USING COVERING INDEX ix_device_tags_tag (tag=?)" in plan, plan
            assert "SCAN device_tags" not in plan, plan
    engine.dispose()
