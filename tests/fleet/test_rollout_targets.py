"""A rollout's target selection is one SQL query, at 2,000 devices on SQLite and on PostgreSQL: by
tags it reads the ``device_tags`` index (a device must carry every tag), by group an equality, and
it selects exactly what the device labels say, revoked devices left out."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, insert, text, update

from fleet.rollout_spec import Target
from fleet.storage import create_engine_for_url, repository
from fleet.storage.rollouts import devices_with_every_tag, resolve_target
from fleet.storage.schema import device_meta, devices

T0 = datetime(2030, 1, 1, tzinfo=UTC)
N = 2000


def labels(n: int) -> tuple[str | None, list[str]]:
    """Device n's group and tags: overlapping, so that 'every tag' and 'any tag' differ."""
    tags = [tag for tag, every in (("cam", 2), ("outdoor", 3), ("lab", 5)) if n % every == 0]
    return (f"line-{n % 4}" if n % 11 else None), tags


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = create_engine_for_url(db_url)
    known = [{"device_id": f"d{n:05d}", "presence": "online" if n % 2 else "offline"} for n in range(N)]
    with engine.begin() as conn:
        conn.execute(insert(devices), [{**row, "first_seen": T0, "last_seen": T0} for row in known])
        for n in range(N + 50):  # the last 50 are labelled but never connected: not targets
            group, tags = labels(n)
            repository.upsert_device_meta(conn, f"d{n:05d}", now=T0, group=group or "", tags=tags)
        revoked = [f"d{n:05d}" for n in range(0, N, 7)]
        conn.execute(update(device_meta).where(device_meta.c.device_id.in_(revoked)).values(revoked_at=T0))
    yield engine
    engine.dispose()


def expected(target: Target) -> list[str]:
    """What the target means, from the labels themselves (the rule the Python filter applied)."""
    chosen = []
    for n in range(N):
        group, tags = labels(n)
        if n % 7 == 0:
            continue
        by_tags = bool(target.tags) and set(target.tags) <= set(tags)
        if by_tags or (target.group is not None and group == target.group):
            chosen.append(f"d{n:05d}")
    return chosen


@pytest.mark.parametrize(
    "target",
    [
        Target(tags=["cam"]),
        Target(tags=["cam", "outdoor"]),
        Target(tags=["outdoor", "cam", "lab"]),
        Target(tags=["cam", "cam"]),
        Target(tags=["cam", "nowhere"]),
        Target(group="line-2"),
    ],
    ids=lambda target: ",".join(target.tags) or f"group={target.group}",
)
def test_target_selection_at_2000_devices(engine: Engine, target: Target) -> None:
    with engine.begin() as conn:
        chosen = resolve_target(conn, target)
    want = expected(target)
    assert [device_id for device_id, _ in chosen] == want
    assert all(presence == ("online" if int(d[1:]) % 2 else "offline") for d, presence in chosen)
    if target.tags == ["cam"]:
        assert len(want) == 857  # 1,000 carry it, 143 of those are revoked


def test_a_tag_target_reads_the_tag_index(engine: Engine) -> None:
    """SQLite's plan: the tags' ranges of ``ix_device_tags_tag``, never a scan of the labels' JSON."""
    if engine.dialect.name != "sqlite":
        pytest.skip("the plan's wording is SQLite's")
    with engine.begin() as conn:
        statement = devices_with_every_tag({"cam", "lab"})
        compiled = statement.compile(conn, compile_kwargs={"literal_binds": True})
        plan = " | ".join(row[-1] for row in conn.execute(text(f"EXPLAIN QUERY PLAN {compiled}")))
    assert "USING COVERING INDEX ix_device_tags_tag (tag=?)" in plan, plan
    assert "SCAN device_tags" not in plan, plan
