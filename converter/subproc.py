"""Run one converter step as ``python -m <module> JOB.json`` with a time limit.

The child writes ``result.json`` into the job's ``out_dir``; whatever happens to it (a clean
result, an exception it reported, a traceback, a signal, a hang) comes back as a ``ChildOutcome``
for the caller to turn into its own typed error. Nothing here raises on the child's behalf.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_SOURCE_ROOT = Path(__file__).resolve().parents[1]
STDERR_TAIL_LINES = 6


@dataclass(frozen=True)
class ChildOutcome:
    returncode: int | None
    """None when the child was killed for overrunning its time limit."""
    result: dict[str, Any] | None
    stderr_tail: str
    seconds: float

    @property
    def timed_out(self) -> bool:
        return self.returncode is None

    @property
    def signal_name(self) -> str | None:
        if self.returncode is None or self.returncode >= 0:
            return None
        try:
            return signal.Signals(-self.returncode).name
        except ValueError:
            return f"signal {-self.returncode}"


def run_module(module: str, job: dict[str, Any], out_dir: Path, timeout: float) -> ChildOutcome:
    """Start the child in its own session; on timeout kill its whole process group."""
    out_dir.mkdir(parents=True, exist_ok=True)
    job_path = out_dir / "job.json"
    job_path.write_text(json.dumps({**job, "out_dir": str(out_dir)}))
    result_path = out_dir / "result.json"
    result_path.unlink(missing_ok=True)
    stderr_path = out_dir / "stderr.txt"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_SOURCE_ROOT), env.get("PYTHONPATH", "")) if p)
    started = time.monotonic()
    with open(stderr_path, "wb") as stderr:
        child = subprocess.Popen(
            [sys.executable, "-m", module, str(job_path)],
            stdin=subprocess.DEVNULL,
            stdout=stderr,
            stderr=stderr,
            env=env,
            start_new_session=True,
        )
        try:
            returncode: int | None = child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(child)
            returncode = None
        except BaseException:  # KeyboardInterrupt: never leave a TensorFlow process behind
            _kill_group(child)
            raise
    seconds = time.monotonic() - started
    result = None
    if returncode is not None and result_path.is_file():
        try:
            loaded = json.loads(result_path.read_text())
            result = loaded if isinstance(loaded, dict) else None
        except ValueError:
            result = None
    return ChildOutcome(returncode, result, _tail(stderr_path), seconds)


def _kill_group(child: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGKILL)
    child.wait()


def _tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    noise = ("WARNING: All log messages", "I0000 ", "W0000 ", "oneDNN custom operations")
    kept = [line for line in lines if line.strip() and not line.startswith(noise) and "port.cc" not in line]
    return "\n".join(kept[-STDERR_TAIL_LINES:])
