"""Where the heavy update steps run: in this process (tests, tools) or in a worker process (the agent).

download, verify, stage and smoke need requests and cryptography (through protocol.bundle and
protocol.signing), ~15 MB resident that would stay in the serving process for its whole life
after the first update. The agent runs each of those steps in a short-lived
``python -m agent.update.worker`` instead, which also contains a model that crashes the runtime
while it is verified or smoke-tested: the worker dies, the agent reports it and rolls back. The
desired state (a small JSON document) is read with the standard library.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from agent import errors
from agent.errors import DownloadError, UpdateError
from agent.runtime import RuntimeChoice
from agent.serving import ActiveModel
from agent.store import ModelStore
from agent.update.fleet_auth import FleetCredentials, basic_header
from agent.update.smoke import smoke
from protocol.errors import MessageError
from protocol.messages import DesiredModel, DesiredState, parse_message

if TYPE_CHECKING:
    import requests

    from protocol.signing import TrustedKeys


class Interrupted(Exception):  # noqa: N818 - a control-flow signal, not an error
    """The agent is stopping: leave the saved state as it is; the next start resumes it."""


class StepRunner(Protocol):
    def fetch_desired(self) -> DesiredState: ...

    def download(self, target: DesiredModel, dest: Path, attempts: int, base_delay_s: float) -> None: ...

    def verify(self, path: Path) -> None: ...

    def stage(self, path: Path, sha256: str) -> None: ...

    def smoke(self, sha256: str) -> ActiveModel | None:
        """The smoke-tested model when it was loaded in this process, else None."""
        ...


class InProcessRunner:
    """Runs the steps here, with an injected ``requests.Session`` (tests mount what they like)."""

    def __init__(
        self,
        *,
        session: requests.Session,
        fleet_url: str,
        device_id: str,
        trusted: TrustedKeys,
        store: ModelStore,
        runtime: RuntimeChoice,
        threads: int,
        timeout_s: float,
        wait: Callable[[float], None],
    ) -> None:
        self.session = session
        self.fleet_url = fleet_url
        self.device_id = device_id
        self.trusted = trusted
        self.store = store
        self.runtime: RuntimeChoice = runtime
        self.threads = threads
        self.timeout_s = timeout_s
        self.wait = wait

    def fetch_desired(self) -> DesiredState:
        from agent.update import steps

        return steps.fetch_desired(self.session, self.fleet_url, self.device_id, self.timeout_s)

    def download(self, target: DesiredModel, dest: Path, attempts: int, base_delay_s: float) -> None:
        from agent.update import steps

        steps.download_with_retries(
            self.session,
            self.fleet_url,
            target,
            dest,
            self.timeout_s,
            attempts=attempts,
            base_delay_s=base_delay_s,
            wait=self.wait,
        )

    def verify(self, path: Path) -> None:
        from agent.update import steps

        steps.verify(path, self.trusted, self.runtime, self.threads)

    def stage(self, path: Path, sha256: str) -> None:
        from agent.update import steps

        bundle, _ = steps.verify(path, self.trusted, self.runtime, self.threads)
        steps.stage(self.store, sha256, bundle)

    def smoke(self, sha256: str) -> ActiveModel | None:
        return smoke(self.store, sha256, self.runtime, self.threads)


_ERRORS: dict[str, type[UpdateError]] = {
    cls.__name__: cls
    for cls in (
        errors.UpdateError,
        errors.DownloadError,
        errors.VerifyError,
        errors.StageError,
        errors.SmokeTestError,
    )
}
_STEP_ERRORS: dict[str, type[UpdateError]] = {
    "download": errors.DownloadError,
    "verify": errors.VerifyError,
    "stage": errors.StageError,
    "smoke": errors.SmokeTestError,
}


class WorkerRunner:
    """Runs each step in ``python -m agent.update.worker``; the request goes in as JSON on stdin,
    the outcome comes back as one JSON line. The worker dies with the agent (PR_SET_PDEATHSIG)
    and is killed when the agent stops (``Interrupted``)."""

    def __init__(
        self,
        *,
        fleet_url: str,
        device_id: str,
        trusted_paths: Sequence[Path],
        state_dir: Path,
        runtime: RuntimeChoice,
        threads: int,
        timeout_s: float,
        user_agent: str,
        stopping: threading.Event,
        python: str = sys.executable,
        credentials: FleetCredentials | None = None,
    ) -> None:
        self.fleet_url = fleet_url
        self.device_id = device_id
        self.trusted_paths = [str(p) for p in trusted_paths]
        self.state_dir = state_dir
        self.runtime: RuntimeChoice = runtime
        self.threads = threads
        self.timeout_s = timeout_s
        self.user_agent = user_agent
        self.stopping = stopping
        self.python = python
        self.credentials = credentials

    def fetch_desired(self) -> DesiredState:
        url = f"{self.fleet_url.rstrip('/')}/api/v1/devices/{self.device_id}/desired"
        headers = {"User-Agent": self.user_agent}
        if self.credentials is not None:
            headers["Authorization"] = basic_header(self.credentials)
        request = urllib.request.Request(url, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                body = response.read(1024 * 1024)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise DownloadError(f"cannot read the desired state from {url}: {exc}") from exc
        try:
            return parse_message(DesiredState, body)
        except MessageError as exc:
            raise DownloadError(f"{url} answered with something that is not a desired state: {exc}") from exc

    def download(self, target: DesiredModel, dest: Path, attempts: int, base_delay_s: float) -> None:
        self._run(
            "download",
            target=target.model_dump(mode="json"),
            dest=str(dest),
            attempts=attempts,
            base_delay_s=base_delay_s,
        )

    def verify(self, path: Path) -> None:
        self._run("verify", path=str(path))

    def stage(self, path: Path, sha256: str) -> None:
        self._run("stage", path=str(path), sha256=sha256)

    def smoke(self, sha256: str) -> ActiveModel | None:
        self._run("smoke", sha256=sha256)
        return None

    def _run(self, step: str, **args: Any) -> None:
        request = {
            "step": step,
            "fleet_url": self.fleet_url,
            "trusted": self.trusted_paths,
            "state_dir": str(self.state_dir),
            "runtime": self.runtime,
            "threads": self.threads,
            "timeout_s": self.timeout_s,
            "user_agent": self.user_agent,
            "credentials": list(self.credentials) if self.credentials else None,  # via stdin, never argv
            **args,
        }
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        kind = _STEP_ERRORS[step]
        try:
            process = subprocess.Popen(
                [self.python, "-m", "agent.update.worker"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=None,  # the worker logs to the agent's stderr (the journal)
                env=env,
            )
        except OSError as exc:
            raise kind(f"cannot start the {step} worker ({self.python}): {exc}") from exc
        assert process.stdin is not None and process.stdout is not None
        try:
            process.stdin.write(json.dumps(request).encode())
            process.stdin.close()
        except BrokenPipeError:
            pass  # it died before reading: its exit status says how
        while True:
            try:
                process.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                if self.stopping.is_set():
                    process.kill()
                    process.wait()
                    raise Interrupted from None
        output = process.stdout.read().decode(errors="replace").strip().splitlines()
        process.stdout.close()
        if process.returncode < 0:
            name = signal.Signals(-process.returncode).name
            raise kind(f"the {step} worker died of {name} (a model that crashes the runtime?)")
        try:
            outcome = json.loads(output[-1])
        except (IndexError, ValueError):
            raise kind(f"the {step} worker exited {process.returncode} without an answer") from None
        if not outcome.get("ok"):
            raise _ERRORS.get(str(outcome.get("error")), kind)(str(outcome.get("message")))
