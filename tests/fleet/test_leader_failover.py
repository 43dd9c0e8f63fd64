"""Two real ``fleet serve`` processes on one PostgreSQL schema: one leads, it is SIGKILLed in the
middle of a rollout, the other takes over, and every wave is judged exactly once."""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

import requests

from benchmarks.fleet import Simulator
from edgefleet.mosquitto import MosquittoBroker
from edgefleet.stack import http_ok
from tests.fleet.bundles import build_bundle
from tests.support.fleet import pg_schema_url
from tests.support.processes import FleetProcess
from tests.support.wait import wait_until

DEVICES = 4
WAVES = ["1", "2", "100%"]  # 1, 2 and 4 devices
ELECTION = ["--rollout-tick", "0.3", "--leader-lease", "3", "--leader-renew", "1"]


def _cluster(fleet: FleetProcess) -> dict[str, Any]:
    body: dict[str, Any] = requests.get(f"{fleet.url}/api/v1/cluster", timeout=10).json()
    return body


def _judgements(log: str, rollout_id: int) -> list[str]:
    """The rollout's promotions and its completion, as the worker that made them logged them."""
    pattern = rf"rollout {rollout_id} (promoted to wave \d+|completed|halted|rolled_back)"
    return re.findall(pattern, log)


def test_follower_takes_over_a_rollout_when_the_leader_is_killed(
    tmp_path: Path, broker: MosquittoBroker, signing_keys: tuple[Path, Path]
) -> None:
    with pg_schema_url() as db_url:
        workers = [
            FleetProcess(
                tmp_path / name,
                broker.port,
                signing_keys[1],
                db_url=db_url,
                client_id=f"fleet-{name}",
                extra=ELECTION,
            )
            for name in ("a", "b")
        ]
        sim: Simulator | None = None
        try:
            for worker in workers:  # started together: their migrations take turns
                worker.start()
            for worker in workers:
                worker.wait_until(lambda w=worker: http_ok(f"{w.url}/api/v1/health"), "the API", 60)
                worker.wait_until(lambda w=worker: _cluster(w)["leader"] is not None, "a leader", 30)
                worker.wait_ingesting()
            leaders = [w for w in workers if _cluster(w)["this_worker_leads"]]
            assert len(leaders) == 1, [_cluster(w) for w in workers]
            leader = leaders[0]
            survivor = workers[1 - workers.index(leader)]
            assert _cluster(survivor)["leader"] == _cluster(leader)["this_worker"]

            for version in ("1.0.0", "2.0.0"):
                requests.post(
                    f"{survivor.url}/api/v1/models",
                    data=build_bundle(signing_keys[0], "digits", version),
                    headers={"Content-Type": "application/octet-stream"},
                    timeout=30,
                ).raise_for_status()
            requests.post(
                f"{survivor.url}/api/v1/deployments",
                json={"name": "digits", "version": "1.0.0", "device_id": None},
                timeout=30,
            ).raise_for_status()
            sim = Simulator(broker, survivor.url, DEVICES, slow_versions=set())
            sim.announce()
            wait_until(
                lambda: len(requests.get(f"{survivor.url}/api/v1/devices", timeout=10).json()) == DEVICES,
                "the simulated devices",
                30,
            )
            threading.Thread(target=sim.run, args=(0.5,), daemon=True).start()
            body = {
                "name": "digits",
                "version": "2.0.0",
                "target": {"all": True},
                "waves": WAVES,
                "gates": {"soak_s": 3, "install_timeout_s": 60},
            }
            response = requests.post(f"{survivor.url}/api/v1/rollouts", json=body, timeout=30)
            assert response.status_code == 201, response.text
            rollout = response.json()["id"]

            def view() -> dict[str, Any]:
                found: dict[str, Any] = requests.get(
                    f"{survivor.url}/api/v1/rollouts/{rollout}", timeout=10
                ).json()
                return found

            # The leader promotes wave 1 to wave 2; then it dies without a word.
            wait_until(lambda: view()["wave"] >= 1, "the leader to promote the first wave", 30)
            assert _judgements(survivor.log_text(), rollout) == []  # the follower judged nothing
            leader.kill()

            final = wait_until(lambda: (v := view())["state"] != "running" and v, "the rollout to end", 40)
            assert final["state"] == "completed", final
            assert final["wave"] == len(WAVES) - 1 and final["devices_assigned"] == DEVICES
            assert _cluster(survivor)["this_worker_leads"]
            assert "now leads 'maintenance' (term 2)" in survivor.log_text()

            # Each wave judged exactly once, between the two workers: the dead leader's promotions
            # and the survivor's take the rollout through every wave, with no promotion twice.
            judged = _judgements(leader.log_text(), rollout) + _judgements(survivor.log_text(), rollout)
            assert sorted(judged) == ["completed", "promoted to wave 2", "promoted to wave 3"], judged
            assert _judgements(survivor.log_text(), rollout), "the survivor took no part in the rollout"
            assert all(m.version == "2.0.0" for m in sim.model.values())
        finally:
            if sim is not None:
                sim.close()
            for worker in workers:
                worker.stop(15)
