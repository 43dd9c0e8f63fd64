"""``python -m agent.update.worker``: one update step in a short-lived process (see runner.py).

Reads one JSON request on stdin, runs the step with the in-process runner, prints one JSON line
``{"ok": true}`` or ``{"ok": false, "error": "<UpdateError subclass>", "message": "..."}``.
"""

from __future__ import annotations

import ctypes
import json
import logging
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.errors import UpdateError
from agent.store import ModelStore
from protocol.errors import EdgefleetError
from protocol.messages import DesiredModel
from protocol.update_state import UpdateState

if TYPE_CHECKING:  # imported in main, after the worker is tied to the agent's life
    from agent.update.runner import InProcessRunner


def _die_with_parent() -> None:
    """Linux: SIGKILL this worker when the agent dies, so no orphan keeps writing the store."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _download(runner: InProcessRunner, request: dict[str, Any]) -> None:
    target = DesiredModel.model_validate(request["target"])
    runner.download(target, Path(request["dest"]), int(request["attempts"]), float(request["base_delay_s"]))


def _verify(runner: InProcessRunner, request: dict[str, Any]) -> None:
    """A bundle file (``path``), or a model already in the store (``sha256``: a rollback)."""
    if "path" in request:
        runner.verify(Path(request["path"]))
    else:
        runner.verify_stored(str(request["sha256"]))


def _unknown(runner: InProcessRunner, request: dict[str, Any]) -> None:
    raise UpdateError(f"unknown update step {request['step']!r}")


_STEPS: dict[str, Callable[[InProcessRunner, dict[str, Any]], None]] = {
    UpdateState.DOWNLOAD: _download,
    UpdateState.VERIFY: _verify,
    UpdateState.STAGE: lambda runner, request: runner.stage(Path(request["path"]), request["sha256"]),
    UpdateState.SMOKE: lambda runner, request: runner.smoke(request["sha256"]),
}
"""The request's ``step`` (the state whose step it is) -> what runs it."""


def main() -> int:
    _die_with_parent()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s worker: %(message)s")
    request = json.loads(sys.stdin.read())
    import requests

    from agent.update.fleet_http import configure_session
    from agent.update.runner import InProcessRunner
    from protocol.signing import TrustedKeys

    step = request["step"]
    try:
        session = requests.Session()
        session.headers["User-Agent"] = request["user_agent"]
        credentials = request.get("credentials")
        ca_file = request.get("ca_file")
        configure_session(
            session,
            request["fleet_url"],
            (credentials[0], credentials[1]) if credentials else None,
            Path(ca_file) if ca_file else None,
        )
        runner = InProcessRunner(
            session=session,
            fleet_url=request["fleet_url"],
            device_id="",
            trusted=TrustedKeys.from_paths([Path(p) for p in request["trusted"]]),
            store=ModelStore(Path(request["state_dir"])),
            runtime=request["runtime"],
            threads=int(request["threads"]),
            timeout_s=float(request["timeout_s"]),
            wait=time.sleep,  # the agent kills the worker when it stops
        )
        _STEPS.get(step, _unknown)(runner, request)
    except EdgefleetError as exc:
        error = type(exc).__name__ if isinstance(exc, UpdateError) else ""  # "": the step's own kind
        print(json.dumps({"ok": False, "error": error, "message": str(exc)}), flush=True)
        return 1
    except Exception as exc:
        message = f"unexpected {type(exc).__name__} in {step}: {exc}"
        print(json.dumps({"ok": False, "error": "", "message": message}), flush=True)
        return 1
    print(json.dumps({"ok": True}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
