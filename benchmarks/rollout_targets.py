"""Creating a tagged rollout in a big fleet: the target's selection and the whole ``start`` (select,
runtime screen, canary order, rows of every targeted device, the first wave's desired state), before
(every device's labels loaded and filtered in Python, as the fleet did) and after (one SQL query on
the ``device_tags`` index), alternately in one run on one database, median of ``--repeat``.

    .venv/bin/python -m benchmarks.rollout_targets [--devices 10000] [--repeat 7] [--skip-postgres]

Targets: ``lab`` (1 % of the devices) and ``cam`` + ``outdoor`` (a third). Each rollout is aborted
after it started (the abort is in the ``start`` figure), so the next one may take the same devices.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, insert, select

from benchmarks.fleet import fresh_pg_url
from fleet.rollout_spec import RolloutRequest, Target
from fleet.rollouts.controller import RolloutController
from fleet.storage import create_engine_for_url, repository
from fleet.storage import rollouts as rollout_store
from fleet.storage.device_tags import device_tags
from fleet.storage.schema import device_meta, devices
from protocol.topics import Topics

T0 = datetime(2030, 1, 1, tzinfo=UTC)
TARGETS = {"lab": ["lab"], "cam+outdoor": ["cam", "outdoor"]}
Selection = Callable[[Connection, Target], list[tuple[str, str]]]


def python_filter(conn: Connection, target: Target) -> list[tuple[str, str]]:
    """The selection as it was: every device's labels read, the tags compared in Python."""
    query = select(devices.c.device_id, devices.c.presence, device_meta.c.group_name, device_meta.c.tags)
    query = query.select_from(devices).outerjoin(device_meta, device_meta.c.device_id == devices.c.device_id)
    query = query.where(device_meta.c.revoked_at.is_(None))
    rows = conn.execute(query.order_by(devices.c.device_id)).all()
    wanted = set(target.tags)
    return [(row.device_id, row.presence) for row in rows if not wanted or wanted <= set(row.tags or [])]


class Quiet:
    """A publisher that accepts everything (the benchmark measures the database's part)."""

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> bool:
        return True


def seed(engine: Engine, n: int) -> None:
    ids = [f"d{i:06d}" for i in range(n)]
    tags = [["lab"] if i % 100 == 0 else ["cam", "outdoor"] if i % 3 == 0 else ["gate"] for i in range(n)]
    with engine.begin() as conn:
        conn.execute(
            insert(devices),
            [{"device_id": d, "presence": "online", "first_seen": T0, "last_seen": T0} for d in ids],
        )
        conn.execute(
            insert(device_meta),
            [
                {"device_id": d, "group_name": f"g{i % 20:02d}", "tags": t, "created_at": T0}
                for i, (d, t) in enumerate(zip(ids, tags, strict=True))
            ],
        )
        conn.execute(
            insert(device_tags),
            [{"device_id": d, "tag": x} for d, t in zip(ids, tags, strict=True) for x in t],
        )
        repository.insert_model(
            conn,
            repository.NewModel(
                name="digits",
                version="2.0.0",
                sha256="b" * 64,
                size=10,
                task="classification",
                quantization="int8",
                key_id="k",
                created_at=T0,
                path="/dev/null",
                manifest={},
            ),
        )


def paired_ms(before: Callable[[], Any], after: Callable[[], Any], repeat: int) -> tuple[float, float]:
    """Medians of the two, run alternately (so a table that grows run by run favours neither)."""
    before()  # warm: pool, statement cache, page cache
    after()
    samples: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeat):
        for call, into in ((before, samples[0]), (after, samples[1])):
            start = time.perf_counter()
            call()
            into.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(samples[0]), 2), round(statistics.median(samples[1]), 2)


@contextmanager
def selection(way: Selection) -> Iterator[None]:
    real = rollout_store.resolve_target
    rollout_store.resolve_target = way  # what the controller calls
    try:
        yield
    finally:
        rollout_store.resolve_target = real


def measure(engine: Engine, repeat: int) -> dict[str, float]:
    controller = RolloutController(engine, Quiet(), Topics(), lambda: T0)
    figures: dict[str, float] = {}
    for name, tags in TARGETS.items():
        target = Target(tags=tags)

        def select_with(way: Selection, target: Target = target) -> None:
            with engine.begin() as conn:
                way(conn, target)

        def started_with(way: Selection, target: Target = target) -> None:
            with selection(way):
                started = controller.start(RolloutRequest(name="digits", version="2.0.0", target=target))
            controller.abort(started.id)

        with engine.begin() as conn:
            same = python_filter(conn, target) == rollout_store.resolve_target(conn, target)
        assert same, f"the two selections of {name} differ"
        pick = (
            lambda: select_with(python_filter),
            lambda: select_with(rollout_store.resolve_target),
        )
        figures[f"{name}_select_before_ms"], figures[f"{name}_select_after_ms"] = paired_ms(*pick, repeat)
        ways = (python_filter, rollout_store.resolve_target)
        starts = tuple(lambda w=way: started_with(w) for way in ways)
        figures[f"{name}_start_before_ms"], figures[f"{name}_start_after_ms"] = paired_ms(*starts, repeat)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--skip-postgres", action="store_true")
    args = parser.parse_args(argv)
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        backends: list[tuple[str, str, Callable[[], None]]] = [
            ("sqlite", f"sqlite:///{Path(tmp) / 'fleet.db'}", lambda: None)
        ]
        if not args.skip_postgres:
            url, drop = fresh_pg_url()
            backends.append(("postgresql", url, drop))
        for backend, url, drop in backends:
            engine = create_engine_for_url(url)
            try:
                seed(engine, args.devices)
                results[backend] = measure(engine, args.repeat)
            finally:
                engine.dispose()
                drop()
    print(f"tagged rollout at {args.devices} devices, median of {args.repeat} (ms; machine shared)")
    print(f"{'database':<11} {'target':<12} {'step':<7} {'before':>9} {'after':>9} {'ratio':>7}")
    for backend, figures in results.items():
        for name in TARGETS:
            for step in ("select", "start"):
                before = figures[f"{name}_{step}_before_ms"]
                after = figures[f"{name}_{step}_after_ms"]
                ratio = round(before / after, 2) if after else 0.0
                figures[f"{name}_{step}_ratio"] = ratio
                print(f"{backend:<11} {name:<12} {step:<7} {before:>9.2f} {after:>9.2f} {ratio:>7.2f}")
    print(json.dumps({"benchmark": "rollout_targets", "figures": results}, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
