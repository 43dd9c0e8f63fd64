"""Where the heavy update steps run: in a worker process (the agent) or in this one (tests, tools).

A deliberate design, measured: download, verify, stage and smoke need requests and cryptography
(through protocol.bundle and protocol.signing), ~15 MB resident that would stay in the serving
process for its whole life after the first update. The agent runs each of those steps in a
short-lived ``python -m agent.update.worker`` instead, which also contains a model that crashes
the runtime while it is verified or smoke-tested: the worker dies, the agent reports it and rolls
back. The desired state (a small JSON document) is read with the standard library.
``make_runner`` is the one place that chooses: a worker, unless a ``requests.Session`` is given.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from agent import errors
from agent.config import AgentConfig, fleet_credentials
from agent.errors import DownloadError, UpdateError
from agent.store import ModelStore
from agent.update.fleet_auth import FleetCredentials, basic_header
from agent.update.fleet_http import configure_session, desired_context, read_desired
from agent.update.machine import Interrupted, State
from agent.update.smoke import smoke
from protocol.errors import MessageError
from protocol.messages import DesiredModel, DesiredState, parse_message
from runtime import RuntimeChoice

if TYPE_CHECKING:
    import requests

    from protocol.signing import TrustedKeys


def interruptible_wait(stopping: threading.Event) -> Callable[[float], None]:
    """A sleep that ends the step (``Interrupted``) when the agent stops: the state stays saved."""

    def wait(seconds: float) -> None:
        if stopping.wait(seconds):
            raise Interrupted

    return wait


class StepRunner(Protocol):
    def fetch_desired(self) -> DesiredState: ...

    def download(self, target: DesiredModel, dest: Path, attempts: int, base_delay_s: float) -> None: ...

    def verify(self, path: Path) -> None: ...

    def verify_stored(self, sha256: str) -> None:
        """``verify`` for a model already in the store: no bundle file, the same checks."""
        ...

    def stage(self, path: Path, sha256: str) -> None: ...

    def smoke(self, sha256: str) -> None:
        """Raises ``SmokeTestError`` unless the staged model reproduces its recorded outputs."""
        ...


class InProcessRunner:
    """Runs the steps here, with an injected ``requests.Session`` (tests mount what they like)."""

    def __init__(  # noqa: PLR0913 - the step inputs shared with the worker runner, keyword-only
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
        from agent.update.steps import fetch_desired

        return fetch_desired(self.session, self.fleet_url, self.device_id, self.timeout_s)

    def download(self, target: DesiredModel, dest: Path, attempts: int, base_delay_s: float) -> None:
        from agent.update.steps import download_with_retries

        download_with_retries(
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
        from agent.update.steps import verify

        verify(path, self.trusted, self.runtime, self.threads)

    def verify_stored(self, sha256: str) -> None:
        from agent.update.steps import verify_stored

        verify_stored(self.store, sha256, self.trusted, self.runtime, self.threads)

    def stage(self, path: Path, sha256: str) -> None:
        from agent.update.steps import stage

        stage(self.store, path, sha256)

    def smoke(self, sha256: str) -> None:
        # The model is loaded for serving at activation, in the serving process (as with a worker).
        smoke(self.store, sha256, self.runtime, self.threads)


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
_STEP_ERRORS: dict[State, type[UpdateError]] = {
    State.DOWNLOAD: errors.DownloadError,
    State.VERIFY: errors.VerifyError,
    State.STAGE: errors.StageError,
    State.SMOKE: errors.SmokeTestError,
}
"""The states whose step a worker runs (its request names the state), and their error kinds."""


class WorkerRunner:
    """Runs each step in ``python -m agent.update.worker``; the request goes in as JSON on stdin,
    the outcome comes back as one JSON line. The worker dies with the agent (PR_SET_PDEATHSIG)
    and is killed when the agent stops (``Interrupted``)."""

    def __init__(  # noqa: PLR0913 - what the worker process needs on its stdin, keyword-only
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
        ca_file: Path | None = None,
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
        self.ca_file = ca_file
        self.tls = desired_context(fleet_url, ca_file)  # TlsFileError names an unusable ca_file

    def fetch_desired(self) -> DesiredState:
        url = f"{self.fleet_url.rstrip('/')}/api/v1/devices/{self.device_id}/desired"
        headers = {"User-Agent": self.user_agent}
        if self.credentials is not None:
            headers["Authorization"] = basic_header(self.credentials)
        body = read_desired(
            url, fleet_url=self.fleet_url, headers=headers, timeout_s=self.timeout_s, context=self.tls
        )
        try:
            return parse_message(DesiredState, body)
        except MessageError as exc:
            raise DownloadError(f"{url} answered with something that is not a desired state: {exc}") from exc

    def download(self, target: DesiredModel, dest: Path, attempts: int, base_delay_s: float) -> None:
        self._run(
            State.DOWNLOAD,
            target=target.model_dump(mode="json"),
            dest=str(dest),
            attempts=attempts,
            base_delay_s=base_delay_s,
        )

    def verify(self, path: Path) -> None:
        self._run(State.VERIFY, path=str(path))

    def verify_stored(self, sha256: str) -> None:
        self._run(State.VERIFY, sha256=sha256)

    def stage(self, path: Path, sha256: str) -> None:
        self._run(State.STAGE, path=str(path), sha256=sha256)

    def smoke(self, sha256: str) -> None:
        self._run(State.SMOKE, sha256=sha256)

    def _run(self, step: State, **args: Any) -> None:
        request = {
            "step": step.value,
            "fleet_url": self.fleet_url,
            "trusted": self.trusted_paths,
            "state_dir": str(self.state_dir),
            "runtime": self.runtime,
            "threads": self.threads,
            "timeout_s": self.timeout_s,
            "user_agent": self.user_agent,
            "credentials": list(self.credentials) if self.credentials else None,  # via stdin, never argv
            "ca_file": str(self.ca_file) if self.ca_file is not None else None,
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


def make_runner(
    config: AgentConfig,
    *,
    user_agent: str,
    stopping: threading.Event,
    session: requests.Session | None = None,
) -> StepRunner:
    """The agent's runner: each heavy step in a worker process. With ``session`` (tests, tools)
    the steps run in this process on that session instead, with the same credentials rules."""
    credentials = fleet_credentials(config)
    if session is None:
        return WorkerRunner(
            fleet_url=config.fleet.url,
            device_id=config.device_id,
            trusted_paths=config.trusted_keys,
            state_dir=config.state_dir,
            runtime=config.runtime.kind,
            threads=config.runtime.threads,
            timeout_s=config.fleet.timeout_s,
            user_agent=user_agent,
            stopping=stopping,
            credentials=credentials,
            ca_file=config.fleet.ca_file,
        )
    from protocol.signing import TrustedKeys

    session.headers.setdefault("User-Agent", user_agent)
    configure_session(session, config.fleet.url, credentials, config.fleet.ca_file)
    return InProcessRunner(
        session=session,
        fleet_url=config.fleet.url,
        device_id=config.device_id,
        trusted=TrustedKeys.from_paths(config.trusted_keys),
        store=ModelStore(config.state_dir),
        runtime=config.runtime.kind,
        threads=config.runtime.threads,
        timeout_s=config.fleet.timeout_s,
        wait=interruptible_wait(stopping),
    )
