"""The device list at fleet scale, for ``benchmarks.fleet --only api``: p50/p99 over HTTP of a first
page, a filtered page and a search page, the time to walk the whole list by its cursors, each p99 as
a ratio to the 100 ms goal; and where a page's time goes, measured in this process on the same
database: the SQL (page + count), building the rows, encoding them. The rest of an HTTP figure is
the server's request handling (routing, token, response) and the loopback round trip."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import requests
from pydantic_core import to_json
from sqlalchemy import Engine, insert

from fleet.device_list import MAX_LIMIT, DeviceListQuery
from fleet.storage import create_engine_for_url
from fleet.storage.device_json import device_json
from fleet.storage.device_page import page_rows
from fleet.storage.device_tags import device_tags
from fleet.storage.schema import device_meta
from fleet.storage.times import now

GOAL_MS = 100.0
GROUPS = 20
CASES: tuple[tuple[str, dict[str, Any]], ...] = (
    ("first_page", {"limit": 100}),
    ("filtered_page", {"limit": 100, "group": "g07", "presence": "online", "sort": "-last_seen"}),
    ("tag_search_page", {"limit": 100, "tag": "cam", "q": "9"}),
    ("page_of_1000", {"limit": MAX_LIMIT}),
)


def label(engine: Engine, device_ids: list[str]) -> None:
    """Groups and tags on every device, as an operator of a big fleet has them."""
    stamp = now()
    rows = [
        {
            "device_id": device_id,
            "group_name": f"g{n % GROUPS:02d}",
            "tags": ["cam", "outdoor"] if n % 3 == 0 else ["gate"],
            "created_at": stamp,
        }
        for n, device_id in enumerate(device_ids)
    ]
    tagged = [{"device_id": row["device_id"], "tag": tag} for row in rows for tag in row["tags"]]
    with engine.begin() as conn:
        conn.execute(insert(device_meta), rows)
        conn.execute(insert(device_tags), tagged)


def p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def _figures(samples: list[float]) -> dict[str, float]:
    worst = p99(samples)
    return {
        "p50_ms": round(statistics.median(samples), 2),
        "p99_ms": round(worst, 2),
        "p99_to_goal": round(worst / GOAL_MS, 3),
        "n": len(samples),
    }


def _timed(call: Callable[[], Any], n: int) -> list[float]:
    call()  # warm: connection pool, statement cache, page cache
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def walk(session: requests.Session, url: str) -> int:
    """Every device by pages of 1,000 following X-Next-Cursor (what ``edgefleet device list`` does)."""
    params: dict[str, Any] = {"limit": MAX_LIMIT}
    seen = 0
    while True:
        response = session.get(f"{url}/api/v1/devices", params=params, timeout=120)
        response.raise_for_status()
        seen += len(response.json())
        cursor = response.headers.get("X-Next-Cursor")
        if cursor is None:
            return seen
        params["cursor"] = cursor


def http_figures(session: requests.Session, url: str, devices_n: int, requests_n: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, params in CASES:

        def get(params: dict[str, Any] = params) -> None:
            session.get(f"{url}/api/v1/devices", params=params, timeout=60).raise_for_status()

        out[name] = _figures(_timed(get, requests_n))
    walked = walk(session, url)
    assert walked == devices_n, f"the walk saw {walked} devices of {devices_n}"
    samples = _timed(lambda: walk(session, url), max(5, requests_n // 20))
    out["full_walk"] = {
        "p50_ms": round(statistics.median(samples), 1),
        "p99_ms": round(p99(samples), 1),
        "pages": -(-devices_n // MAX_LIMIT),
        "n": len(samples),
    }
    return out


def breakdown(db_url: str, requests_n: int) -> dict[str, Any]:
    """Median ms per page of each step, in this process against the same database."""
    engine = create_engine_for_url(db_url)
    out: dict[str, Any] = {}
    try:
        for name, params in CASES:
            query = DeviceListQuery(**params)
            steps: dict[str, list[float]] = {"sql_ms": [], "rows_ms": [], "json_ms": []}
            for _ in range(requests_n + 1):
                t0 = time.perf_counter()
                with engine.begin() as conn:
                    rows, _total, _cursor = page_rows(conn, query)
                t1 = time.perf_counter()
                built = [device_json(row) for row in rows]
                t2 = time.perf_counter()
                to_json(built)
                t3 = time.perf_counter()
                for key, spent in zip(steps, (t1 - t0, t2 - t1, t3 - t2), strict=True):
                    steps[key].append(spent * 1000)
            out[name] = {key: round(statistics.median(v[1:]), 2) for key, v in steps.items()}
    finally:
        engine.dispose()
    return out


def rows_for_report(name: str, figures: dict[str, Any]) -> list[tuple[str, str]]:
    """The printed table's lines for one database."""
    lines = []
    for case, _ in CASES:
        r, b = figures[case], figures["breakdown"][case]
        lines.append(
            (
                f"  device list {case}: p50 / p99 ms; p99 / 100 ms goal ({name})",
                f"{r['p50_ms']:.1f} / {r['p99_ms']:.1f}; {r['p99_to_goal']:.2f}x",
            )
        )
        lines.append(
            (
                f"    in-process: SQL / rows / JSON ms ({name})",
                f"{b['sql_ms']:.1f} / {b['rows_ms']:.1f} / {b['json_ms']:.1f}",
            )
        )
    walk_figures = figures["full_walk"]
    lines.append(
        (
            f"  device list, whole fleet by cursor ({walk_figures['pages']} pages of 1,000): "
            f"p50 / p99 ms ({name})",
            f"{walk_figures['p50_ms']:.0f} / {walk_figures['p99_ms']:.0f}",
        )
    )
    return lines
