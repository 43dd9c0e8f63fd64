"""Applying a device identity change to Mosquitto: the password-file line of one device.

The ACL is the same for every device (``%u`` patterns, ``fleet.provision.ACL_TEMPLATE``), so adding,
rotating, revoking or deleting a device changes only its line in the password file. When ``fleet
serve`` is given the file (``--broker-password-file``) it rewrites it atomically and has Mosquitto
reload it (SIGHUP to the pid in ``--broker-pid-file``, or ``--broker-reload-command``); a reload
also disconnects clients whose user is no longer in the file. Otherwise ``instructions`` says
exactly what the operator must apply.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import tempfile
import threading
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from fleet.errors import StorageError

RELOAD_TIMEOUT_S = 10.0


class BrokerFilesError(StorageError):
    """The broker's password file cannot be rewritten, or Mosquitto cannot be told to reload (503)."""


class BrokerChange(BaseModel):
    """What happened on the broker's side of an identity change."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    applied: bool = Field(description="true: the fleet rewrote the password file and Mosquitto reloaded it")
    instructions: str = Field(description="what was done, or exactly what the operator must do")


def _pattern(device_id: str) -> str:
    return device_id.replace(".", r"\.")


def manual_change(device_id: str, line: str | None, replaces: bool) -> BrokerChange:
    """What the operator applies when the fleet does not manage the password file."""
    reload = "then reload Mosquitto (`systemctl reload mosquitto`, i.e. SIGHUP to its pid)"
    if line is None:
        text = (
            f"remove the line of {device_id} from Mosquitto's password_file, e.g. "
            f"`sed -i '/^{_pattern(device_id)}:/d' /etc/mosquitto/edgefleet.passwd`, {reload}: "
            "until then the device can still log in to the broker and publish (the ACL needs no change)"
        )
    elif replaces:
        text = (
            f"replace the line starting with '{device_id}:' in Mosquitto's password_file with\n{line}\n"
            f"{reload}: until then the old secret still logs in to the broker"
        )
    else:
        text = f"append to Mosquitto's password_file\n{line}\n{reload}"
    return BrokerChange(applied=False, instructions=text)


class PasswordFile:
    """The Mosquitto password file the fleet keeps: one line per device, other users left alone."""

    def __init__(self, path: Path, pid_file: Path | None = None, reload_command: str | None = None) -> None:
        if (pid_file is None) == (reload_command is None):
            raise BrokerFilesError(
                "a managed broker password file needs exactly one way to reload Mosquitto: "
                "--broker-pid-file (Mosquitto's pid_file) or --broker-reload-command"
            )
        self.path = path
        self.pid_file = pid_file
        self.reload_command = reload_command
        self._lock = threading.Lock()

    def check(self) -> None:
        """At start: the file exists and its folder is writable (the temporary file goes there)."""
        if not self.path.is_file():
            raise BrokerFilesError(
                f"--broker-password-file {self.path} does not exist: create it (it may be empty)"
            )
        if not os.access(self.path.parent, os.W_OK):
            raise BrokerFilesError(
                f"--broker-password-file {self.path}: its folder is not writable by the fleet, "
                "which replaces the file atomically"
            )

    def apply(self, device_id: str, line: str | None) -> BrokerChange:
        """Give ``device_id`` this line (``None``: none), write the file atomically, reload Mosquitto."""
        with self._lock:
            self._rewrite(device_id, line)
            how = self.reload()
        done = "removed from" if line is None else "written to"
        return BrokerChange(applied=True, instructions=f"{device_id} {done} {self.path}; {how}")

    def _rewrite(self, device_id: str, line: str | None) -> None:
        try:
            text = self.path.read_text()
            info = self.path.stat()
        except OSError as exc:
            raise BrokerFilesError(f"cannot read {self.path}: {exc.strerror or exc}") from exc
        kept = [old for old in text.splitlines() if old.split(":", 1)[0] != device_id]
        if line is not None:
            kept.append(line)
        fd, temp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as out:
                out.write("".join(f"{entry}\n" for entry in kept))
                out.flush()
                os.fsync(out.fileno())
            os.chmod(temp, info.st_mode & 0o777)
            if os.stat(temp).st_gid != info.st_gid:
                os.chown(temp, -1, info.st_gid)  # Mosquitto reads it through the group
            os.replace(temp, self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise BrokerFilesError(f"cannot rewrite {self.path}: {exc.strerror or exc}") from exc

    def reload(self) -> str:
        if self.pid_file is not None:
            try:
                pid = int(self.pid_file.read_text().strip())
                os.kill(pid, signal.SIGHUP)
            except (OSError, ValueError) as exc:
                raise BrokerFilesError(
                    f"{self.path} is rewritten but Mosquitto was not reloaded: cannot signal the pid in "
                    f"{self.pid_file}: {getattr(exc, 'strerror', None) or exc}"
                ) from exc
            return f"SIGHUP sent to Mosquitto (pid {pid})"
        assert self.reload_command is not None
        try:
            done = subprocess.run(  # the operator's own command, split without a shell
                shlex.split(self.reload_command),
                check=False,
                capture_output=True,
                text=True,
                timeout=RELOAD_TIMEOUT_S,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise BrokerFilesError(
                f"{self.path} is rewritten but `{self.reload_command}` failed: {exc}"
            ) from exc
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()
            raise BrokerFilesError(
                f"{self.path} is rewritten but `{self.reload_command}` exited {done.returncode}"
                + (f": {tail[-1]}" if tail else "")
            )
        return f"`{self.reload_command}` reloaded Mosquitto"
