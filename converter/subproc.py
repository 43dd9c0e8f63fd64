"""Run one converter step as ``python -m <module> JOB.json`` with a time limit.

The child writes ``result.json`` into the job's ``out_dir``; whatever happens to it (a clean
result, an exception it reported, a traceback, a signal, a hang) comes back as a ``ChildOutcome``
for the caller to turn into its own typed error. Nothing here raises on the child's behalf.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_SOURCE_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class ChildOutcome:
    returncode: int | None
    """None when the child was killed for overrunning its time limit."""
    result: dict[str, Any] | None
    seconds: float
    last_words: str | None
    """The child's most meaningful last line on stderr (a crash's Python frame, an error), never
    a warning: what an error message quotes."""

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
    return ChildOutcome(returncode, result, seconds, _last_words(stderr_path))


def _kill_group(child: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGKILL)
    child.wait()


_FATAL = re.compile(r"^Fatal Python error: (?P<what>.+)$")
_FRAME = re.compile(r'^\s*File "(?P<file>[^"]+)", line (?P<line>\d+) in (?P<function>\S+)')
_WARNING = re.compile(r"^\s*warnings\.warn\(|\b[A-Z]\w*Warning: |^\s*warn\(")


def _last_words(path: Path) -> str | None:
    """A crash (``faulthandler``): its cause and the innermost Python frame of the crashing
    thread. Otherwise the last line that is neither logging noise nor a warning."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for index, line in enumerate(lines):
        fatal = _FATAL.match(line)
        if fatal is None:
            continue
        frame = next((m for m in map(_FRAME.match, lines[index + 1 :]) if m is not None), None)
        where = f" in {Path(frame['file']).name} line {frame['line']} ({frame['function']})" if frame else ""
        return f"Fatal Python error: {fatal['what']}{where}"
    kept = [
        line.strip()
        for line in lines
        if line.strip()
        and not line.startswith(_NOISE)
        and "port.cc" not in line
        and not _WARNING.search(line)
    ]
    return kept[-1] if kept else None


_NOISE = ("WARNING: All log messages", "I0000 ", "W0000 ", "oneDNN custom operations")
