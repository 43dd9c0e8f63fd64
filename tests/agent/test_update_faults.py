"""Updates under faults: every state x {exception, hang, kill} from one table, then cut and failing
downloads, a full disk, probation, and load during switches."""

from __future__ import annotations

import errno
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import IO

import numpy as np
import pytest
import requests

from agent.errors import DownloadError, SmokeTestError, VerifyError
from agent.http_api import InferenceAPI
from agent.store import ModelStore
from agent.telemetry import RequestMetrics
from agent.update import State, UpdatePolicy
from agent.update import steps as update_steps
from agent.update.faults import Faults
from agent.update.runner import WorkerRunner
from protocol.messages import DesiredModel, UpdateEvent
from tests.agent.peer import FleetPeer
from tests.support.agent import DEVICE, Bundles, stage_directly
from tests.support.fault_table import FAULT_TABLE, FAULTS, NEW, OLD, FaultCase, check_reported, fault_cases
from tests.support.updater import build_updater, serving, updater_config, worker_runner
from tests.support.wait import wait_until

# The fault table (tests.support.fault_table): v1 serves; the fleet wants "v2" (or "smoke_bad",
# to reach rollback and failed); the fault strikes right after the state was saved. Here:
# raise and hang in this process; kill with a real agent process in test_kills.py.


def test_the_fault_table_covers_every_state_and_fault() -> None:
    """A state added to the machine without its rows shows up here as untested."""
    acting = [state for state in State if state is not State.IDLE]
    rows = [(case.state, case.fault) for case in FAULT_TABLE]
    assert sorted(rows) == sorted((state, fault) for state in acting for fault in FAULTS)
    for case in FAULT_TABLE:
        assert case.state in case.chain, case.id


@pytest.mark.parametrize("case", fault_cases("raise", "hang"))
def test_a_fault_in_every_state_ends_serving_the_old_or_the_new_model(
    tmp_path: Path, trusted_dir: Path, fleet_peer: FleetPeer, bundles: Bundles, case: FaultCase
) -> None:
    state = tmp_path / "state"
    v1 = stage_directly(state, bundles.v1, trusted_dir)
    wanted = fleet_peer.deploy(DEVICE, getattr(bundles, case.bundle), "digits", NEW)
    events: list[UpdateEvent] = []
    if case.fault == "raise":
        faults = Faults(raise_in=case.state)
        updater = build_updater(state, trusted_dir, fleet_peer.url, events, faults=faults)
        updater.check()
    else:
        stopping = threading.Event()
        hung = build_updater(
            state, trusted_dir, fleet_peer.url, events, faults=Faults(hang_in=case.state), stopping=stopping
        )
        first = threading.Thread(target=hung.check)
        first.start()
        wait_until(lambda: bool(events) and events[-1].state is case.state, f"a hang in {case.state}", 60)
        assert first.is_alive()  # hanging, not finished
        stopping.set()  # what SIGTERM does: the update stops in its state, saved
        first.join(10)
        assert not first.is_alive() and hung.state is case.state
        updater = build_updater(state, trusted_dir, fleet_peer.url, events)  # the next start
        assert serving(updater) is not None  # serving from the start, before any check
        updater.check()

    check_reported(case, events)
    assert serving(updater) == case.serving
    assert updater.state is State.IDLE
    assert updater.store.read_pointer().active == (v1 if case.serving == OLD else wanted)
    if case.serving == OLD and case.state is not State.FAILED:
        assert updater.record.failed_sha256 == wanted  # not retried until the fleet changes its mind


def test_a_cut_download_resumes_with_range(
    tmp_path: Path, trusted_dir: Path, fleet_peer: FleetPeer, bundles: Bundles
) -> None:
    events: list[UpdateEvent] = []
    updater = build_updater(tmp_path / "state", trusted_dir, fleet_peer.url, events)
    fleet_peer.deploy(DEVICE, bundles.v2, "digits", "2.0.0")
    half = len(bundles.v2) // 2
    fleet_peer.cut[fleet_peer.filename(DEVICE)] = half
    updater.check()
    assert serving(updater) == "2.0.0"
    # The second request asked only for the rest (less the read in progress when the cut came).
    assert len(fleet_peer.ranges) == 1
    start = int(fleet_peer.ranges[0].removeprefix("bytes=").removesuffix("-"))
    assert half - update_steps.DOWNLOAD_CHUNK <= start <= half
    assert [e.state for e in events][-1] is State.COMMIT


def test_server_errors_are_retried_with_backoff(
    tmp_path: Path, trusted_dir: Path, fleet_peer: FleetPeer, bundles: Bundles
) -> None:
    events: list[UpdateEvent] = []
    updater = build_updater(tmp_path / "state", trusted_dir, fleet_peer.url, events)
    fleet_peer.deploy(DEVICE, bundles.v1, "digits", "1.0.0")
    fleet_peer.fail[fleet_peer.filename(DEVICE)] = 2
    updater.check()
    assert serving(updater) == "1.0.0"
    assert sum(1 for p in fleet_peer.requests if p.startswith("/bundles/")) == 3


def test_retries_give_up_and_roll_back(
    tmp_path: Path, trusted_dir: Path, fleet_peer: FleetPeer, bundles: Bundles
) -> None:
    state = tmp_path / "state"
    stage_directly(state, bundles.v1, trusted_dir)
    events: list[UpdateEvent] = []
    updater = build_updater(state, trusted_dir, fleet_peer.url, events)
    fleet_peer.deploy(DEVICE, bundles.v2, "digits", "2.0.0")
    fleet_peer.fail[fleet_peer.filename(DEVICE)] = 10
    updater.check()
    assert serving(updater) == "1.0.0"
    assert events[-1].state is State.FAILED and events[-1].reason is not None
    assert "gave up after 4 attempts" in events[-1].reason


def test_a_reloaded_policy_applies_to_the_next_update_as_one_value(
    tmp_path: Path, trusted_dir: Path, fleet_peer: FleetPeer, bundles: Bundles
) -> None:
    """SIGHUP's path: a new ``UpdatePolicy`` from the changed ``[update]`` section, swapped whole."""
    state = tmp_path / "state"
    stage_directly(state, bundles.v1, trusted_dir)
    events: list[UpdateEvent] = []
    updater = build_updater(state, trusted_dir, fleet_peer.url, events)
    changed = updater_config(state, trusted_dir, fleet_peer.url, {"download_attempts": 2})
    policy = UpdatePolicy.from_config(changed.update)
    assert policy.download.attempts == 2 and policy.probation == updater.policy.probation
    updater.reload(policy)
    assert updater.policy is policy
    fleet_peer.deploy(DEVICE, bundles.v2, "digits", "2.0.0")
    fleet_peer.fail[fleet_peer.filename(DEVICE)] = 10
    updater.check()
    assert events[-1].reason is not None and "gave up after 2 attempts" in events[-1].reason
    assert sum(1 for p in fleet_peer.requests if p.startswith("/bundles/")) == 2


def test_backoff_grows_exponentially_with_jitter(tmp_path: Path, bundles: Bundles) -> None:
    waits: list[float] = []

    class Down(requests.Session):
        def get(self, *args: object, **kwargs: object) -> requests.Response:
            raise requests.ConnectionError("refused")

    target = DesiredModel(name="digits", version="1.0.0", sha256="0" * 64, size=10, url="/b")
    with pytest.raises(DownloadError, match="gave up after 5 attempts"):
        update_steps.download_with_retries(
            Down(),
            "http://127.0.0.1:1",
            target,
            tmp_path / "x.bundle",
            1,
            attempts=5,
            base_delay_s=1.0,
            wait=waits.append,
            jitter=lambda: 1.0,
        )
    assert waits == [1.0, 2.0, 4.0, 8.0]


def test_disk_full_in_the_state_directory_fails_cleanly_and_keeps_serving(
    tmp_path: Path,
    trusted_dir: Path,
    fleet_peer: FleetPeer,
    bundles: Bundles,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ENOSPC is simulated at the one place bundle bytes are written (``steps._open_part``)."""
    state = tmp_path / "state"
    stage_directly(state, bundles.v1, trusted_dir)
    events: list[UpdateEvent] = []
    updater = build_updater(state, trusted_dir, fleet_peer.url, events)

    class FullDisk:
        def __init__(self, path: Path, mode: str) -> None:
            self.handle: IO[bytes] = open(path, mode)  # noqa: SIM115
            self.written = 0

        def __enter__(self) -> FullDisk:
            return self

        def __exit__(self, *exc: object) -> None:
            self.handle.close()

        def write(self, data: bytes) -> int:
            if self.written + len(data) > 4096:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.written += len(data)
            return self.handle.write(data)

    monkeypatch.setattr(update_steps, "_open_part", FullDisk)
    fleet_peer.deploy(DEVICE, bundles.v2, "digits", "2.0.0")
    updater.check()
    assert serving(updater) == "1.0.0"
    assert [e.state for e in events][-2:] == [State.ROLLBACK, State.FAILED]
    assert events[-1].reason is not None and "no space left in the state directory" in events[-1].reason
    assert not list(updater.store.downloads_dir.iterdir())  # the partial file is gone
    assert updater.state is State.IDLE
    monkeypatch.undo()
    fleet_peer.deploy(DEVICE, bundles.v2, "digits", "2.0.1")  # the operator freed space, redeployed
    updater.check()


def test_probation_rolls_back_a_model_that_fails_in_inference(
    tmp_path: Path, trusted_dir: Path, fleet_peer: FleetPeer, bundles: Bundles
) -> None:
    state = tmp_path / "state"
    stage_directly(state, bundles.v1, trusted_dir)
    events: list[UpdateEvent] = []
    metrics = RequestMetrics()
    policy = {"probation_s": 5, "probation_min_requests": 5, "health_check_interval_s": 0.05}
    updater = build_updater(state, trusted_dir, fleet_peer.url, events, metrics=metrics, update=policy)
    v2 = fleet_peer.deploy(DEVICE, bundles.v2, "digits", "2.0.0")

    def failing_requests() -> None:  # what the HTTP API records when the new model's invoke fails
        wait_until(lambda: updater.state is State.PROBATION, "the update to reach probation", 60, 0.005)
        for _ in range(10):
            metrics.record_error("inference", model_sha=v2)

    thread = threading.Thread(target=failing_requests)
    thread.start()
    updater.check()
    thread.join()
    assert serving(updater) == "1.0.0"
    assert [e.state for e in events][-4:] == [State.ACTIVATE, State.PROBATION, State.ROLLBACK, State.FAILED]
    assert events[-1].reason is not None and "10 of 10 requests failed in inference" in events[-1].reason


@pytest.mark.slow
@pytest.mark.parametrize("outcome", ["commit", "rollback"])
def test_no_request_fails_while_a_model_is_activated_or_rolled_back(
    tmp_path: Path, trusted_dir: Path, fleet_peer: FleetPeer, bundles: Bundles, outcome: str
) -> None:
    state = tmp_path / "state"
    stage_directly(state, bundles.v1, trusted_dir)
    events: list[UpdateEvent] = []
    metrics = RequestMetrics()
    # "rollback": any invoke time counts as worse than the previous model's, so probation fails.
    factor = 1e-9 if outcome == "rollback" else 1e9
    policy = {
        "probation_s": 1.5,
        "probation_min_requests": 5,
        "max_latency_factor": factor,
        "probation_min_invokes": 5,
        "health_check_interval_s": 0.1,
    }
    updater = build_updater(state, trusted_dir, fleet_peer.url, events, metrics=metrics, update=policy)
    api = InferenceAPI("127.0.0.1", 0, updater.holder, metrics).start()
    url = f"{api.url}/v1/predict"
    body = {"inputs": bundles.samples_x[0].tolist()}
    binary = np.ascontiguousarray(bundles.samples_x[:2], dtype="<f4").tobytes()
    stop = threading.Event()
    seen: Counter[str] = Counter()
    failures: list[str] = []
    lock = threading.Lock()

    def client(i: int) -> None:
        with requests.Session() as session:
            while not stop.is_set():
                if i % 2:
                    r = session.post(url, data=binary, headers={"Content-Type": "application/octet-stream"})
                    version = r.headers.get("X-Model", "/").split("/")[1]
                else:
                    r = session.post(url, json=body)
                    version = r.json().get("model", {}).get("version", "") if r.ok else ""
                with lock:
                    if r.status_code != 200:
                        failures.append(f"{r.status_code} {r.text[:200]}")
                    seen[version] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.3)  # the old model has invoke times for probation to compare with
        fleet_peer.deploy(DEVICE, bundles.v2, "digits", "2.0.0")
        updater.check()
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join()
        api.stop()
    assert failures == []
    assert seen["1.0.0"] > 0 and seen["2.0.0"] > 0
    expected = "2.0.0" if outcome == "commit" else "1.0.0"
    assert serving(updater) == expected
    assert events[-1].state is (State.COMMIT if outcome == "commit" else State.FAILED)
    if outcome == "rollback":
        assert events[-1].reason is not None and "median invoke time" in events[-1].reason


def _worker(tmp_path: Path, trusted_dir: Path, python: str = sys.executable) -> WorkerRunner:
    return worker_runner(tmp_path / "state", trusted_dir, python=python)


def test_the_worker_process_reports_failures_in_words(
    tmp_path: Path, trusted_dir: Path, bundles: Bundles
) -> None:
    ModelStore(tmp_path / "state").open()
    runner = _worker(tmp_path, trusted_dir)
    untrusted = tmp_path / "untrusted.bundle"
    untrusted.write_bytes(bundles.untrusted)
    with pytest.raises(VerifyError, match="signature check failed"):
        runner.verify(untrusted)
    good = tmp_path / "v1.bundle"
    good.write_bytes(bundles.v1)
    runner.verify(good)
    runner.stage(good, Bundles.sha(bundles.v1))
    runner.smoke(Bundles.sha(bundles.v1))  # smoke-tested over there: raises unless it passed
    runner.verify_stored(Bundles.sha(bundles.v1))  # a kept model, verified from disk over there
    (tmp_path / "state" / "models" / Bundles.sha(bundles.v1) / "manifest.sig").write_bytes(b"{}")
    with pytest.raises(VerifyError, match="signature check of stored model"):
        runner.verify_stored(Bundles.sha(bundles.v1))
    assert ModelStore(tmp_path / "state").has(Bundles.sha(bundles.v1))


def test_a_worker_that_crashes_fails_the_step_not_the_agent(tmp_path: Path, trusted_dir: Path) -> None:
    """What a model that segfaults the runtime in verify or smoke does: only the worker dies."""
    crashing = tmp_path / "python"
    crashing.write_text(f"#!{sys.executable}\nimport os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n")
    crashing.chmod(0o755)
    with pytest.raises(SmokeTestError, match="worker died of SIGSEGV"):
        _worker(tmp_path, trusted_dir, python=str(crashing)).smoke("0" * 64)


def test_the_serving_process_stays_free_of_requests_and_cryptography() -> None:
    script = (
        "import sys\n"
        "import agent.app, agent.__main__, agent.update.runner, agent.update.smoke\n"
        "print(sorted(m for m in ('requests', 'urllib3', 'cryptography') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
