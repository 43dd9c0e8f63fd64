"""The elected worker's maintenance rounds at fleet scale: one alert round and one summary round,
timed in this process on a copy of a fleet database (e.g. the one ``benchmarks.fleet --only api``
generates: 10,000 devices x 1 day), three rounds in a row. The first summary round publishes every
retained document; a later one only what changed, so its time is what a fleet at rest costs the
serving process every ``summary_interval_s``. Publishes go to a counting publisher (no broker): the
figure is the fleet's own work, which holds the GIL while API requests wait.

    PYTHONPATH=$PWD python -m benchmarks.rounds /path/to/api.db [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from fleet.alerts import AlertEngine, AlertRules
from fleet.storage import create_engine_for_url
from fleet.summary import SummaryPublisher
from protocol.topics import Topics


class CountingPublisher:
    """Accepts every publish and counts them (the broker's side is not what is measured)."""

    def __init__(self) -> None:
        self.published = 0
        self.generation = 1

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> bool:
        self.published += 1
        return True

    def refused(self, topic: str) -> bool:
        return False


def main() -> None:
    logging.disable(logging.WARNING)  # the first round logs one line per opened alert
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("database", type=Path, help="a fleet SQLite database (copied; the copy is used)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="rounds-"))
    copy = workdir / "fleet.db"
    shutil.copyfile(args.database, copy)
    engine = create_engine_for_url(f"sqlite:///{copy}")
    publisher = CountingPublisher()
    topics = Topics()
    alerts = AlertEngine(
        engine, publisher, topics.fleet_alerts, AlertRules(), clock=lambda: datetime.now(UTC)
    )
    summary = SummaryPublisher(engine, publisher, topics)
    figures: dict[str, float] = {}
    print(f"{'round':>5}  {'alerts_ms':>10}  {'opened':>7}  {'summary_ms':>10}  {'published':>9}")
    for n in range(1, args.rounds + 1):
        start = time.perf_counter()
        opened, _ = alerts.evaluate()
        alerts_ms = (time.perf_counter() - start) * 1000
        before = publisher.published
        start = time.perf_counter()
        summary.publish()
        summary_ms = (time.perf_counter() - start) * 1000
        published = publisher.published - before
        print(f"{n:>5}  {alerts_ms:>10.0f}  {len(opened):>7}  {summary_ms:>10.0f}  {published:>9}")
        figures[f"round{n}_alerts_ms"] = round(alerts_ms, 1)
        figures[f"round{n}_summary_ms"] = round(summary_ms, 1)
        figures[f"round{n}_published"] = published
    engine.dispose()
    shutil.rmtree(workdir)
    print(json.dumps({"benchmark": "rounds", "figures": figures}))


if __name__ == "__main__":
    main()
