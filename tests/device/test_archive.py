"""The offline device archive, built for this machine (x86_64) and installed below a temporary root.

Real parts throughout: the wheels come from the registries through pip, install.sh runs as it
would on a device (``--root`` only moves every path below a folder), and the agent started is the
installed copy. The aarch64 archive is installed into the emulated rootfs by scripts/arm-test and
the unit is run under a real systemd by scripts/systemd-test.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tomllib
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.agent_toml import agent_settings, write_agent_toml
from edgefleet.device_archive import ArchiveError, Target, build_archive, wheel_glibc
from tests.support.wait import wait_until

PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="install.sh creates a user and chowns: run as root")


def test_platform_tags_cover_every_glibc_up_to_the_devices() -> None:
    tags = Target("aarch64", "3.11", glibc="2.36").platform_tags()
    assert "manylinux_2_34_aarch64" in tags  # tflite-runtime 2.14's aarch64 wheels
    assert "manylinux_2_17_aarch64" in tags and "manylinux2014_aarch64" in tags
    assert "manylinux_2_37_aarch64" not in tags
    assert "manylinux_2_34_aarch64" not in Target("aarch64", "3.11", glibc="2.31").platform_tags()


@pytest.mark.parametrize(
    ("arch", "python", "glibc"),
    [("riscv64", "3.11", "2.36"), ("aarch64", "3", "2.36"), ("x86_64", "3.11", "36")],
)
def test_a_target_validates_itself(arch: str, python: str, glibc: str) -> None:
    with pytest.raises(ArchiveError):
        Target(arch, python, glibc=glibc)


def test_wheel_glibc_reads_the_oldest_tag() -> None:
    assert wheel_glibc("tflite_runtime-2.14.0-cp311-cp311-manylinux_2_34_aarch64.whl") == (2, 34)
    assert wheel_glibc("numpy-1.26.4-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl") == (2, 17)
    assert wheel_glibc("psutil-7.2.2-cp36-abi3-manylinux2010_x86_64.manylinux_2_12_x86_64.whl") == (2, 12)
    assert wheel_glibc("requests-2.34.2-py3-none-any.whl") is None


def test_litert_is_refused_where_it_has_no_wheels(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match="armv7l"):
        build_archive(Target("armv7l", "3.11"), tmp_path, litert=True)


@pytest.fixture(scope="module")
def archive_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The x86_64 archive for this Python, built from this checkout and unpacked."""
    if platform.machine() != "x86_64":
        pytest.skip("the fast archive test installs an x86_64 archive on this machine")
    out = tmp_path_factory.mktemp("dist")
    archive = build_archive(Target("x86_64", PYTHON), out)
    with tarfile.open(archive) as tar:
        tar.extractall(out, filter="data")
    return out / archive.name.removesuffix(".tar.gz")


def test_the_archive_holds_the_agent_and_nothing_of_the_server_or_converter(archive_dir: Path) -> None:
    info = json.loads((archive_dir / "archive.json").read_text())
    assert (info["arch"], info["python"], info["extras"]) == ("x86_64", PYTHON, ["agent"])
    names = {w.name.split("-")[0].lower() for w in (archive_dir / "wheels").glob("*.whl")}
    assert {"edgefleet", "tflite_runtime", "numpy", "paho_mqtt", "pydantic", "psutil"} <= names
    assert not names & {"tensorflow", "tensorflow_cpu", "fastapi", "sqlalchemy", "uvicorn", "alembic"}
    for name in ("install.sh", "systemd/edgefleet-agent.service", "doc/install.md", "SHA256SUMS"):
        assert (archive_dir / name).is_file()


def _install(archive: Path, root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    return subprocess.run(
        [str(archive / "install.sh"), "--root", str(root), "--python", sys.executable, *args],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        timeout=600,
    )


def _copy_with(archive: Path, dest: Path, edit: dict[str, str]) -> Path:
    """A copy of the unpacked archive with archive.json changed and its checksum updated."""
    shutil.copytree(archive, dest)
    info = json.loads((dest / "archive.json").read_text())
    info.update(edit)
    (dest / "archive.json").write_text(json.dumps(info))
    sums = subprocess.run(["sha256sum", "archive.json"], cwd=dest, capture_output=True, text=True, check=True)
    lines = [ln for ln in (dest / "SHA256SUMS").read_text().splitlines() if not ln.endswith("  archive.json")]
    (dest / "SHA256SUMS").write_text("\n".join([*lines, sums.stdout.strip()]) + "\n")
    return dest


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def installed(archive_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """(root, operator config) after one install with a config and a key."""
    if os.geteuid() != 0:
        pytest.skip("install.sh creates a user and chowns: run as root")
    root = tmp_path_factory.mktemp("root")
    files = tmp_path_factory.mktemp("files")
    port = _free_port()
    config = files / "dev-1-agent.toml"
    settings = agent_settings(
        "dev-1",
        root / "var/lib/edgefleet",
        [root / "etc/edgefleet/trusted"],
        "http://127.0.0.1:9",
        mqtt_port=1,
        api_port=port,
    )
    write_agent_toml(config, settings)
    config.chmod(0o600)  # as edgefleet device add --out writes it
    (files / "operator.pub").write_text("not checked by install.sh\n")
    done = _install(archive_dir, root, "--config", str(config), "--trusted-key", str(files / "operator.pub"))
    assert done.returncode == 0, done.stdout + done.stderr
    yield root, config


@needs_root
def test_install_places_everything_with_owners_and_modes(installed: tuple[Path, Path]) -> None:
    root, _ = installed
    user = next(
        ln.split(":") for ln in (root / "etc/passwd").read_text().splitlines() if ln.startswith("edgefleet:")
    )
    uid, gid = int(user[2]), int(user[3])
    config = (root / "etc/edgefleet/agent.toml").stat()
    assert (config.st_uid, config.st_gid, config.st_mode & 0o777) == (0, gid, 0o640)
    state = (root / "var/lib/edgefleet").stat()
    assert (state.st_uid, state.st_gid, state.st_mode & 0o777) == (uid, gid, 0o750)
    unit = (root / "etc/systemd/system/edgefleet-agent.service").read_text()
    assert "ExecStart=/opt/edgefleet/bin/edgefleet agent run" in unit
    assert (root / "opt/edgefleet/bin/edgefleet").resolve().is_file()
    for line in unit.splitlines():
        if line.startswith("Documentation=file://"):
            assert (root / line.removeprefix("Documentation=file:///")).is_file(), line
    if shutil.which("systemctl"):
        assert (root / "etc/systemd/system/multi-user.target.wants/edgefleet-agent.service").is_symlink()


@needs_root
def test_the_installed_agent_runs_without_the_server_or_converter(installed: tuple[Path, Path]) -> None:
    root, _ = installed
    python = root / "opt/edgefleet/current/bin/python"
    for module in ("tensorflow", "fastapi", "sqlalchemy"):
        probe = subprocess.run([str(python), "-c", f"import {module}"], capture_output=True, check=False)
        assert probe.returncode != 0, f"{module} is installed on the device"
    config = root / "etc/edgefleet/agent.toml"
    port = tomllib.loads(config.read_text())["api"]["port"]
    _agent_answers(root, config, port, "the installed agent", 60)


@needs_root
def test_an_upgrade_keeps_the_state_and_the_config(
    archive_dir: Path, installed: tuple[Path, Path], tmp_path: Path
) -> None:
    root, _ = installed
    marker = root / "var/lib/edgefleet/active.json"
    marker.write_text('{"active": null, "previous": null}')
    before_config = (root / "etc/edgefleet/agent.toml").read_bytes()
    before_release = os.readlink(root / "opt/edgefleet/current")
    newer = _copy_with(archive_dir, tmp_path / "newer", {"built_at": "later"})
    done = _install(newer, root)
    assert done.returncode == 0, done.stdout + done.stderr
    assert os.readlink(root / "opt/edgefleet/current") != before_release
    assert (root / "opt/edgefleet" / before_release).is_dir(), "the previous release is kept for a rollback"
    assert (root / "etc/edgefleet/agent.toml").read_bytes() == before_config
    assert marker.read_text() == '{"active": null, "previous": null}'
    assert "keeping /etc/edgefleet/agent.toml" in done.stdout


@needs_root
@pytest.mark.parametrize(
    ("edit", "error"),
    [
        ({"arch": "aarch64"}, "this archive is for aarch64"),
        ({"python": "3.9"}, "this archive is for Python 3.9"),
        ({"glibc_min": "2.99"}, "the wheels need glibc >= 2.99"),
    ],
)
def test_an_archive_for_another_machine_is_refused(
    archive_dir: Path, tmp_path: Path, edit: dict[str, str], error: str
) -> None:
    done = _install(_copy_with(archive_dir, tmp_path / "other", edit), tmp_path / "root")
    assert done.returncode != 0 and error in done.stderr
    assert not (tmp_path / "root/opt").exists()


@needs_root
def test_a_damaged_archive_is_refused(archive_dir: Path, tmp_path: Path) -> None:
    damaged = shutil.copytree(archive_dir, tmp_path / "damaged")
    wheel = next((damaged / "wheels").glob("edgefleet-*.whl"))
    data = bytearray(wheel.read_bytes())
    data[len(data) // 2] ^= 0xFF
    wheel.write_bytes(bytes(data))
    done = _install(damaged, tmp_path / "root")
    assert done.returncode != 0 and "checksums do not match" in done.stderr


# -- The runtime per target (tflite-runtime where it has a wheel, LiteRT elsewhere) --------------


def test_the_agent_extra_is_evaluated_for_the_target_not_the_host() -> None:
    from packaging.requirements import Requirement

    from edgefleet.device_archive import Project, source_root

    project = Project.read(source_root())
    litert_on_312 = next(r for r in project.extras["agent"] if r.startswith("ai-edge-litert"))
    host_marker = Requirement(litert_on_312).marker
    assert host_marker is not None and not host_marker.evaluate({"extra": "agent", "python_version": "3.11"})
    on_312 = project.agent_requirements(Target("aarch64", "3.12"), ("litert",))
    assert "ai-edge-litert>=2.0" in on_312 and not any(r.startswith("tflite-runtime") for r in on_312)
    on_311 = project.agent_requirements(Target("aarch64", "3.11"), ("tflite-runtime",))
    assert "tflite-runtime==2.14.0" in on_311 and not any(r.startswith("ai-edge-litert") for r in on_311)
    assert all(";" not in r for r in on_311 + on_312), "the device gets no markers to evaluate"


def test_a_forced_runtime_replaces_the_markers_choice() -> None:
    from edgefleet.device_archive import plan_archive

    plan = plan_archive(Target("x86_64", "3.11"), runtime="litert")  # asks no registry
    assert plan.runtimes == ("litert",) and plan.extras == ["agent", "litert"]
    assert not any(r.startswith("tflite-runtime") for r in plan.requirements)


@pytest.mark.parametrize(
    ("target", "error"),
    [
        (Target("armv7l", "3.11"), "numpy, psutil, cffi publish no armv7l wheels"),
        (Target("x86_64", "3.13"), "requires-python"),
        (Target("x86_64", "3.10"), "requires-python"),
    ],
)
def test_targets_the_agent_cannot_resolve_are_refused_before_any_download(
    target: Target, error: str, tmp_path: Path
) -> None:
    with pytest.raises(ArchiveError, match=error):
        build_archive(target, tmp_path)
    assert not list(tmp_path.iterdir())


def test_tflite_runtime_forced_where_it_has_no_wheel_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match=r"no wheel for aarch64, Python 3\.12.*--runtime litert"):
        build_archive(Target("aarch64", "3.12"), tmp_path, runtime="tflite-runtime")


def test_an_aarch64_python_312_archive_takes_litert_and_lists_its_wheels(tmp_path: Path) -> None:
    archive = build_archive(Target("aarch64", "3.12"), tmp_path)
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path, filter="data")
    top = tmp_path / archive.name.removesuffix(".tar.gz")
    info = json.loads((top / "archive.json").read_text())
    assert (info["arch"], info["python"], info["runtimes"]) == ("aarch64", "3.12", ["litert"])
    assert "tflite-runtime==2.14.0 publishes no wheel" in info["runtime_reason"]
    wheels = {w.name for w in (top / "wheels").glob("*.whl")}
    names = {w.split("-")[0].lower() for w in wheels}
    assert {"edgefleet", "ai_edge_litert", "numpy", "paho_mqtt", "pydantic", "psutil"} <= names
    assert "tflite_runtime" not in names
    for name in ("ai_edge_litert", "numpy", "pydantic_core"):
        wheel = next(w for w in wheels if w.lower().startswith(name + "-"))
        assert "-cp312-" in wheel and wheel.endswith("aarch64.whl"), wheel
    requirements = (top / "requirements.txt").read_text().splitlines()
    assert "ai-edge-litert>=2.0" in requirements and "edgefleet==" + info["edgefleet"] in requirements
    assert not any("tflite" in line or ";" in line for line in requirements)


def _python_312() -> Path | None:
    """A Python 3.12 that runs (a pyenv shim on PATH may name one that is not installed)."""
    candidates = sorted(Path.home().glob(".pyenv/versions/3.12.*/bin/python3.12"), reverse=True)
    on_path = shutil.which("python3.12")
    for python in [*candidates, *([Path(on_path)] if on_path else [])]:
        probe = subprocess.run(
            [str(python), "-c", "import sys, venv; print(sys.version_info[:2])"],
            capture_output=True,
            text=True,
            check=False,
        )
        if probe.stdout.strip() == "(3, 12)":
            return python
    return None


@needs_root
def test_a_python_312_archive_installs_and_the_agent_runs_on_litert_alone(tmp_path: Path) -> None:
    python = _python_312()
    if python is None or platform.machine() != "x86_64":
        pytest.skip("needs an x86_64 machine with a Python 3.12 (python3.12 on PATH or in pyenv)")
    archive = build_archive(Target("x86_64", "3.12"), tmp_path / "dist")
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "dist", filter="data")
    root = tmp_path / "root"
    port = _free_port()
    config = write_agent_toml(
        tmp_path / "agent.toml",
        agent_settings(
            "dev-1",
            root / "var/lib/edgefleet",
            [root / "etc/edgefleet/trusted"],
            "http://127.0.0.1:9",
            mqtt_port=1,
            api_port=port,
        ),
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    top = tmp_path / "dist" / archive.name.removesuffix(".tar.gz")
    done = subprocess.run(
        [
            str(top / "install.sh"),
            "--root",
            str(root),
            "--python",
            str(python),
            "--no-compile",
            "--config",
            str(config),
        ],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    venv_python = root / "opt/edgefleet/current/bin/python"
    probe = subprocess.run(
        [
            str(venv_python),
            "-c",
            "import sys; from runtime import installed_runtimes as i, resolve_runtime as r; "
            "print(sys.version_info[:2], [x.name for x in i()], r('auto').name)",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert probe.stdout.strip() == "(3, 12) ['litert'] litert"
    _agent_answers(root, config, port, "the Python 3.12 agent", 90)


def _agent_answers(root: Path, config: Path, port: int, what: str, timeout_s: float) -> None:
    """Start the installed agent, wait for /v1/health to say no-model, stop it with SIGTERM and
    require a clean exit."""
    agent = subprocess.Popen(
        [str(root / "opt/edgefleet/bin/edgefleet"), "agent", "run", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )

    def health() -> dict[str, object] | None:
        if agent.poll() is not None:
            raise AssertionError(f"{what} exited with {agent.returncode} before answering")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/health", timeout=2) as answer:
                body: dict[str, object] = json.loads(answer.read())
                return body
        except OSError:
            return None

    try:
        assert wait_until(health, f"{what}'s /v1/health", timeout_s, 0.2)["status"] == "no-model"
    finally:
        agent.send_signal(signal.SIGTERM)
        _, err = agent.communicate(timeout=30)
    assert agent.returncode == 0, err[-2000:]
