"""Updates under faults: cut and failing downloads, a full disk, probation, and load during switches."""

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

from agent.errors import SmokeTestError, VerifyError
from agent.http_api import InferenceAPI
from agent.serving import ModelHolder
from agent.store import ModelStore
from agent.telemetry import LatencyHistogram, ModelUsage, RequestMetrics
from agent.update import Updater
from agent.update import steps as update_steps
from agent.update.probation import PASSED, WATCHING, ProbationPolicy, judge
from agent.update.runner import WorkerRunner
from protocol.messages import UpdateEvent
from protocol.signing import TrustedKeys
from tests.agent.conftest import DEVICE, Bundles, stage_directly
from tests.agent.peer import FleetPeer


def make_updater(
    state: Path,
    trusted: Path,
    peer: FleetPeer,
    events: list[UpdateEvent],
    *,
    metrics: RequestMetrics | None = None,
    probation: ProbationPolicy | None = None,
) -> Updater:
    store = ModelStore(state).open()
    holder = ModelHolder()
    metrics = metrics or RequestMetrics()
    updater = Updater(
        DEVICE,
        store,
        holder,
        trusted=TrustedKeys.from_paths([trusted]),
        session=requests.Session(),
        fleet_url=peer.url,
        runtime="tflite-runtime",
        timeout_s=5,
        emit=events.append,
        probation=probation,
        usage=metrics.usage,
        download_attempts=4,
        retry_base_s=0.01,
    )
    updater.resume(local_only=True)
    if holder.current is None:
        holder.swap(updater.load_serving(store.read_pointer()))
    return updater


def serving(updater: Updater) -> str | None:
    model = updater.holder.current
    return model.manifest.version if model else None


def test_a_cut_download_resumes_with_range(
    tmp_path: Path, trusted_dir: Path, fleet_peer: FleetPeer, bundles: Bundles
) -> None:
    events: list[UpdateEvent] = []
    updater = make_updater(tmp_path / "state", trusted_dir, fleet_peer, events)
    fleet_peer.deploy(DEVICE, bundles.v2, "digits", "2.0.0")
    half = len(bundles.v2) // 2
    fleet_peer.cut[fleet_peer.filename(DEVICE)] = half
    updater.check()
    assert serving(updater) == "2.0.0"
    # The second request asked only for the rest (less the read in progress when the cut came).
    assert len(fleet_peer.ranges) == 1
    start = int(fleet_peer.ranges[0].removeprefix("bytes=").removesuffix("-"))
    assert half - update_steps.DOWNLOAD_CHUNK <= start <= half
    assert [e.state for e in events][-1] == "commit"


def test_server_errors_are_retried_with_backoff(
    tmp_path: Path, trusted_dir: Path, fleet_peer: FleetPeer, bundles: Bundles
) -> None:
    events: list[UpdateEvent] = []
    updater = make_updater(tmp_path / "state", trusted_dir, fleet_peer, events)
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
    updater = make_updater(state, trusted_dir, fleet_peer, events)
    fleet_peer.deploy(DEVICE, bundles.v2, "digits", "2.0.0")
    fleet_peer.fail[fleet_peer.filename(DEVICE)] = 10
    updater.check()
    assert serving(updater) == "1.0.0"
    assert events[-1].state == "failed" and events[-1].reason is not None
    assert "gave up after 4 attempts" in events[-1].reason


def test_backoff_grows_exponentially_with_jitter(tmp_path: Path, bundles: Bundles) -> None:
    waits: list[float] = []

    class Down(requests.Session):
        def get(self, *args: object, **kwargs: object) -> requests.Response:  # type: ignore[override]
            raise requests.ConnectionError("refused")

    from protocol.messages import DesiredModel

    target = DesiredModel(name="digits", version="1.0.0", sha256="0" * 64, size=10, url="/b")
    with pytest.raises(update_steps.DownloadError, match="gave up after 5 attempts"):
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
    updater = make_updater(state, trusted_dir, fleet_peer, events)

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
    assert [e.state for e in events][-2:] == ["rollback", "failed"]
    assert events[-1].reason is not None and "no space left in the state directory" in events[-1].reason
    assert not list(updater.store.downloads_dir.iterdir())  # the partial file is gone
    assert updater.state == "idle"
    monkeypatch.undo()
    fleet_peer.deploy(DEVICE, bundles.v2, "digits", "2.0.1")  # the operator freed space, redeployed
    updater.check()


def _usage(requests_: int, errors: int, p50_ms: float) -> ModelUsage:
    latency = LatencyHistogram()
    for _ in range(requests_ - errors):
        latency.record(p50_ms)
    return ModelUsage(requests_, errors, latency)


def test_probation_rules() -> None:
    policy = ProbationPolicy(
        duration_s=60, requests=0, min_requests=20, max_error_rate=0.05, max_latency_factor=2
    )
    assert judge(policy, _usage(10, 5, 1.0), 1.0, 1) == WATCHING  # too few requests to judge
    failed = judge(policy, _usage(100, 10, 1.0), 1.0, 1)
    assert failed.done and failed.failure is not None and "10 of 100 requests failed" in failed.failure
    assert judge(policy, _usage(100, 0, 5.0), 1.0, 1) == WATCHING  # latency: judged at the end
    slow = judge(policy, _usage(100, 0, 5.0), 1.0, 61)
    assert slow.failure is not None and "more than 2x the previous model" in slow.failure
    assert judge(policy, _usage(100, 0, 1.5), 1.0, 61) == PASSED
    assert judge(policy, _usage(100, 0, 1.5), None, 61) == PASSED  # no previous latency: not judged
    by_count = ProbationPolicy(duration_s=600, requests=50)
    assert judge(by_count, _usage(50, 0, 1.0), 1.0, 1) == PASSED


def test_probation_rolls_back_a_model_that_fails_in_inference(
    tmp_path: Path, trusted_dir: Path, fleet_peer: FleetPeer, bundles: Bundles
) -> None:
    state = tmp_path / "state"
    stage_directly(state, bundles.v1, trusted_dir)
    events: list[UpdateEvent] = []
    metrics = RequestMetrics()
    policy = ProbationPolicy(duration_s=5, min_requests=5, check_interval_s=0.05)
    updater = make_updater(state, trusted_dir, fleet_peer, events, metrics=metrics, probation=policy)
    v2 = fleet_peer.deploy(DEVICE, bundles.v2, "digits", "2.0.0")

    def failing_requests() -> None:  # what the HTTP API records when the new model's invoke fails
        while updater.state != "probation":
            time.sleep(0.005)
        for _ in range(10):
            metrics.record_error("inference", model_sha=v2)

    thread = threading.Thread(target=failing_requests)
    thread.start()
    updater.check()
    thread.join()
    assert serving(updater) == "1.0.0"
    assert [e.state for e in events][-4:] == ["activate", "probation", "rollback", "failed"]
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
    # "rollback": any latency counts as worse than the previous model's, so probation fails.
    factor = 1e-9 if outcome == "rollback" else 1e9
    policy = ProbationPolicy(duration_s=1.5, min_requests=5, max_latency_factor=factor, check_interval_s=0.1)
    updater = make_updater(state, trusted_dir, fleet_peer, events, metrics=metrics, probation=policy)
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
        time.sleep(0.3)  # the old model has a latency record for probation to compare with
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
    assert events[-1].state == ("commit" if outcome == "commit" else "failed")
    if outcome == "rollback":
        assert events[-1].reason is not None and "p50 latency" in events[-1].reason


def _worker(tmp_path: Path, trusted_dir: Path, python: str = sys.executable) -> WorkerRunner:
    return WorkerRunner(
        fleet_url="http://127.0.0.1:1",
        device_id=DEVICE,
        trusted_paths=[trusted_dir],
        state_dir=tmp_path / "state",
        runtime="tflite-runtime",
        threads=1,
        timeout_s=5,
        user_agent="test",
        stopping=threading.Event(),
        python=python,
    )


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
    assert runner.smoke(Bundles.sha(bundles.v1)) is None  # smoke-tested over there
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


def test_the_previous_models_latency_is_its_recent_one() -> None:
    """Probation compares with the old model under the load of late, not its whole life."""
    usage = ModelUsage()
    for _ in range(5000):
        usage.record(0.1)  # a quiet morning
    for _ in range(1500):
        usage.record(2.0)  # then the load arrived, and with it the new model
    recent = usage.recent_p50()
    assert recent is not None and 1.8 <= recent <= 2.3
    assert usage.latency.percentile(50) < 0.2
    assert ModelUsage().recent_p50() is None
