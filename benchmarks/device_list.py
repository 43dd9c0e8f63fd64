"""The device list at fleet scale, for ``benchmarks.fleet --only api``: p50/p99 over HTTP of a first
page, a filtered page and a search page, the time to walk the whole list by its cursors, each p99 as
a ratio to the 100 ms goal, on the real server and, taking requests in turn with it, one whose
start-up heap is left to the garbage collector (``benchmarks.fleet_unfrozen``: what ``gc.freeze``
saves, side by side); and where a page's time goes, measured in this process on the same
database: the SQL (page + count), building the rows, encoding them, and the filtered total's count
beside the count as it was before. The rest of an HTTP figure is the server's request handling
(routing, token, response) and the loopback round trip."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import requests
from pydantic_core import to_json
from sqlalchemy import Connection, Engine, func, insert, select

from fleet.device_list import MAX_LIMIT, DeviceListQuery
from fleet.storage import create_engine_for_url
from fleet.storage.device_json import device_json
from fleet.storage.device_page import _arms, _seen_arm, filtered_total, page_rows
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


def http_figures(
    session: requests.Session, urls: dict[str, str], devices_n: int, requests_n: int
) -> dict[str, Any]:
    """Per server in ``urls`` (the first is the real one), each case's figures; the servers take
    the requests in turn (A, B, A, B, ...), so a burst of load on the shared machine lands on both.
    The whole-fleet walk is timed on the first only."""
    out: dict[str, Any] = {name: {} for name in urls}
    for case, params in CASES:
        samples: dict[str, list[float]] = {name: [] for name in urls}

        def get(url: str, params: dict[str, Any] = params) -> None:
            session.get(f"{url}/api/v1/devices", params=params, timeout=60).raise_for_status()

        for url in urls.values():
            get(url)  # warm: connection pool, statement cache, page cache
        for _ in range(requests_n):
            for name, url in urls.items():
                start = time.perf_counter()
                get(url)
                samples[name].append((time.perf_counter() - start) * 1000)
        for name in urls:
            out[name][case] = _figures(samples[name])
    first, url = next(iter(urls.items()))
    walked = walk(session, url)
    assert walked == devices_n, f"the walk saw {walked} devices of {devices_n}"
    walks = _timed(lambda: walk(session, url), max(5, requests_n // 20))
    out[first]["full_walk"] = {
        "p50_ms": round(statistics.median(walks), 1),
        "p99_ms": round(p99(walks), 1),
        "pages": -(-devices_n // MAX_LIMIT),
        "n": len(walks),
    }
    return out


def count_before(conn: Connection, query: DeviceListQuery) -> int:
    """The filtered total as it was counted before the never-seen arm had a counting form: over
    the subquery of its full rows (the desired model's joins included). Kept here only to time it
    beside ``filtered_total``."""
    arms = [arm for arm, seen in _arms(conn, query) if not seen]
    seen_count = _seen_arm(conn, query, counting=True)
    counts = [] if seen_count is None else [seen_count.scalar_subquery()]
    counts += [select(func.count()).select_from(arm.subquery()).scalar_subquery() for arm in arms]
    return int(conn.execute(select(sum(counts[1:], counts[0]))).scalar_one()) if counts else 0


def breakdown(db_url: str, requests_n: int) -> dict[str, Any]:
    """Median ms per page of each step, in this process against the same database; and the
    filtered total's count, now and as counted before (``count_before``), in turn."""
    engine = create_engine_for_url(db_url)
    out: dict[str, Any] = {}
    try:
        for name, params in CASES:
            query = DeviceListQuery(**params)
            steps: dict[str, list[float]] = {
                "sql_ms": [],
                "rows_ms": [],
                "json_ms": [],
                "count_ms": [],
                "count_before_ms": [],
            }
            for _ in range(requests_n + 1):
                t0 = time.perf_counter()
                with engine.begin() as conn:
                    rows, total, _cursor = page_rows(conn, query)
                t1 = time.perf_counter()
                built = [device_json(row) for row in rows]
                t2 = time.perf_counter()
                to_json(built)
                t3 = time.perf_counter()
                with engine.begin() as conn:
                    counted = filtered_total(conn, query)
                t4 = time.perf_counter()
                with engine.begin() as conn:
                    assert count_before(conn, query) == counted == total
                t5 = time.perf_counter()
                spans = (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)
                for key, spent in zip(steps, spans, strict=True):
                    steps[key].append(spent * 1000)
            out[name] = {key: round(statistics.median(v[1:]), 2) for key, v in steps.items()}
            out[name]["count_p99_ms"] = round(p99(steps["count_ms"][1:]), 2)
            out[name]["count_before_p99_ms"] = round(p99(steps["count_before_ms"][1:]), 2)
    finally:
        engine.dispose()
    return out


def rows_for_report(name: str, figures: dict[str, Any]) -> list[tuple[str, str]]:
    """The printed table's lines for one database: each case on the real server and on the one
    without ``gc.freeze`` (measured in turn), then where the time goes in-process."""
    lines = []
    after, before = figures["served"], figures["unfrozen"]
    for case, _ in CASES:
        r, o, b = after[case], before[case], figures["breakdown"][case]
        lines.append(
            (
                f"  device list {case}: p50 / p99 ms; p99 / 100 ms goal ({name}); without gc.freeze",
                f"{r['p50_ms']:.1f} / {r['p99_ms']:.1f}; {r['p99_to_goal']:.2f}x; "
                f"{o['p50_ms']:.1f} / {o['p99_ms']:.1f}",
            )
        )
        lines.append(
            (
                f"    in-process: SQL / rows / JSON ms; count p50 / p99 ms, before: p50 / p99 ({name})",
                f"{b['sql_ms']:.1f} / {b['rows_ms']:.1f} / {b['json_ms']:.1f}; "
                f"{b['count_ms']:.1f} / {b['count_p99_ms']:.1f}, "
                f"{b['count_before_ms']:.1f} / {b['count_before_p99_ms']:.1f}",
            )
        )
    walk_figures = after["full_walk"]
    lines.append(
        (
            f"  device list, whole fleet by cursor ({walk_figures['pages']} pages of 1,000): "
            f"p50 / p99 ms ({name})",
            f"{walk_figures['p50_ms']:.0f} / {walk_figures['p99_ms']:.0f}",
        )
    )
    return lines
