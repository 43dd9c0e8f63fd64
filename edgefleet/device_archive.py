"""``edgefleet device-archive``: one self-contained archive that installs the agent offline.

On the operator's machine (which reaches the package registries) it builds, for one target
(CPU architecture, Python version, glibc), a ``.tar.gz`` holding

* ``wheels/``: the edgefleet wheel built from this source tree and every wheel the agent extra
  needs on the target, resolved by ``pip download --platform ... --only-binary=:all:``;
* ``requirements.txt`` (what to install) and ``constraints.txt`` (every wheel pinned), so the
  device installs exactly what was resolved here, with ``pip --no-index``;
* ``SHA256SUMS`` and ``archive.json`` (target, runtime, versions, the oldest glibc the wheels accept);
* ``install.sh``, the systemd unit, the sysusers.d entry and the docs.

The TFLite runtime is chosen per target (``plan_archive``): tflite-runtime where a wheel exists
for the target's architecture, Python and glibc, LiteRT otherwise, or what the operator forces.
``requirements.txt`` is written here with the agent extra's environment markers evaluated for the
target: pip would evaluate them for the Python that runs it, not for ``--python-version``.

The device needs only Python (with venv) of the same minor version; see docs/install.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from protocol.errors import EdgefleetError

if TYPE_CHECKING:
    from packaging.requirements import Requirement

ARCHES = ("aarch64", "armv7l", "x86_64")
# Debian 12 (bookworm) and Raspberry Pi OS 12 ship glibc 2.36.
DEFAULT_GLIBC = "2.36"
# What the agent extra runs on per architecture: LiteRT publishes no armv7l wheels.
LITERT_ARCHES = ("aarch64", "x86_64")
RuntimeName = Literal["tflite-runtime", "litert"]
RUNTIME_CHOICES = ("auto", "tflite-runtime", "litert")
# The distribution of each runtime, and the extra of pyproject.toml its requirement is taken from.
RUNTIME_DISTS: dict[RuntimeName, tuple[str, str]] = {
    "tflite-runtime": ("tflite-runtime", "agent"),
    "litert": ("ai-edge-litert", "litert"),
}
# The agent's dependencies that publish no armv7l wheel on PyPI (tflite-runtime does publish one).
ARMV7L_MISSING = ("numpy", "psutil", "cffi")
PACKAGE_DIRS = ("agent", "converter", "fleet", "protocol", "runtime", "edgefleet")
PACKAGING_FILES = {
    "install.sh": "packaging/install.sh",
    "edgefleet.sysusers": "packaging/edgefleet.sysusers",
    "systemd/edgefleet-agent.service": "systemd/edgefleet-agent.service",
    "doc/agent.md": "docs/agent.md",
    "doc/install.md": "docs/install.md",
}
_WHEEL_NAME = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+)(-\d[^-]*)?-[^-]+-[^-]+-(?P<plat>[^-]+)\.whl$")
_MANYLINUX = re.compile(r"manylinux_(\d+)_(\d+)_")
_LEGACY_MANYLINUX = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}


class ArchiveError(EdgefleetError):
    """The device archive could not be built (no wheel for the target, pip failed, ...)."""


@dataclass(frozen=True)
class Target:
    """The device an archive is for."""

    arch: str
    python: str
    glibc: str = DEFAULT_GLIBC

    def __post_init__(self) -> None:
        if self.arch not in ARCHES:
            choices = ", ".join(ARCHES)
            raise ArchiveError(f"architecture {self.arch!r} is not supported; choose one of {choices}")
        if not re.fullmatch(r"3\.\d{1,2}", self.python):
            raise ArchiveError(f"Python version {self.python!r} is not MAJOR.MINOR, e.g. 3.11")
        if not re.fullmatch(r"2\.\d{1,2}", self.glibc):
            raise ArchiveError(f"glibc version {self.glibc!r} is not 2.N, e.g. 2.36")

    @property
    def abi(self) -> str:
        return "cp" + self.python.replace(".", "")

    def platform_tags(self) -> list[str]:
        """Every manylinux tag a device with this glibc accepts (pip does not expand them itself)."""
        minor = int(self.glibc.split(".")[1])
        tags = [f"manylinux_2_{m}_{self.arch}" for m in range(minor, 16, -1)]
        tags.append(f"manylinux2014_{self.arch}")
        if self.arch == "x86_64":
            tags += [f"manylinux2010_{self.arch}", f"manylinux1_{self.arch}"]
        return tags

    @property
    def stem(self) -> str:
        return f"{self.arch}-py{self.python}"


def wheel_glibc(filename: str) -> tuple[int, int] | None:
    """The oldest glibc a wheel file runs on, from its platform tag; None for pure wheels."""
    match = _WHEEL_NAME.match(filename)
    if match is None:
        raise ArchiveError(f"{filename} is not a wheel file name")
    found: list[tuple[int, int]] = []
    for plat in match.group("plat").split("."):
        modern = _MANYLINUX.match(plat)
        if modern:
            found.append((int(modern.group(1)), int(modern.group(2))))
        for legacy, version in _LEGACY_MANYLINUX.items():
            if plat.startswith(legacy + "_"):
                found.append(version)
    return min(found) if found else None


def source_root() -> Path:
    """The source tree this edgefleet runs from (the wheel is built from it)."""
    root = Path(__file__).resolve().parent.parent
    if not (root / "pyproject.toml").is_file() or not (root / "packaging" / "install.sh").is_file():
        raise ArchiveError(
            f"no edgefleet source tree at {root} (pyproject.toml and packaging/install.sh): "
            "device-archive builds the edgefleet wheel from a checkout; run it from one"
        )
    return root


def _run(command: list[str], what: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if "is ignored: it is neither" not in line]
        raise ArchiveError(f"{what} failed (exit {done.returncode}):\n" + "\n".join(lines[-15:]))


def build_edgefleet_wheel(root: Path, out: Path) -> Path:
    """Build the edgefleet wheel from a copy of the sources (the checkout stays untouched)."""
    with tempfile.TemporaryDirectory(prefix="edgefleet-src-") as tmp:
        src = Path(tmp)
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(root / name, src / name)
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        for package in PACKAGE_DIRS:
            shutil.copytree(root / package, src / package, ignore=ignore)
        _run(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(out), str(src)],
            "building the edgefleet wheel",
        )
    wheels = sorted(out.glob("edgefleet-*.whl"))
    if len(wheels) != 1:
        raise ArchiveError(f"expected one edgefleet wheel in {out}, found {len(wheels)}")
    return wheels[0]


def _pip_download_command(target: Target, out: Path, wheelhouse: Path | None) -> list[str]:
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--disable-pip-version-check",
        "--dest",
        str(out),
        "--only-binary=:all:",
        "--implementation",
        "cp",
        "--python-version",
        target.python,
        "--abi",
        target.abi,
        "--abi",
        "abi3",
        "--abi",
        "none",
    ]
    for tag in target.platform_tags():
        command += ["--platform", tag]
    if wheelhouse is not None:
        command += ["--find-links", str(wheelhouse)]
    return command


def download_wheels(
    target: Target,
    edgefleet_wheel: Path,
    requirements: Sequence[str],
    out: Path,
    *,
    constraints: Path | None = None,
    wheelhouse: Path | None = None,
) -> None:
    """``pip download`` the edgefleet wheel's dependencies and ``requirements`` for the target,
    binary wheels only. The wheel is named without extras: its base dependencies carry no markers,
    and the agent's requirements come already evaluated for the target (``plan_archive``)."""
    command = _pip_download_command(target, out, wheelhouse)
    if constraints is not None:
        command += ["--constraint", str(constraints)]
    command += [str(edgefleet_wheel), *requirements]
    what = f"resolving the agent's wheels for {target.arch}, Python {target.python}, glibc {target.glibc}"
    _run(command, what)


def has_wheel(target: Target, requirement: str, wheelhouse: Path | None = None) -> bool:
    """Whether ``requirement`` has a wheel for the target (one ``pip download --no-deps``).

    False only when pip finds no matching distribution; any other failure (no network, a bad
    requirement) is an ArchiveError, so a network error never silently picks the other runtime."""
    with tempfile.TemporaryDirectory(prefix="edgefleet-probe-") as tmp:
        command = [*_pip_download_command(target, Path(tmp), wheelhouse), "--no-deps", requirement]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode == 0:
        return True
    if "No matching distribution found" in done.stderr:
        return False
    lines = done.stderr.strip().splitlines()[-10:]
    raise ArchiveError(
        f"could not look up {requirement} for {target.stem} (exit {done.returncode}):\n" + "\n".join(lines)
    )


def _packaging() -> Any:
    try:
        import packaging.markers
        import packaging.requirements
        import packaging.specifiers
    except ImportError as exc:  # a dependency of pip's tools, TensorFlow and pytest; not of edgefleet's
        raise ArchiveError(
            "device-archive evaluates requirement markers with the packaging module: pip install packaging"
        ) from exc
    return packaging


def target_environment(target: Target) -> dict[str, str]:
    """The PEP 508 marker environment of the target device (CPython on Linux)."""
    return {
        "implementation_name": "cpython",
        "implementation_version": f"{target.python}.0",
        "os_name": "posix",
        "platform_machine": target.arch,
        "platform_python_implementation": "CPython",
        "platform_system": "Linux",
        "python_full_version": f"{target.python}.0",
        "python_version": target.python,
        "sys_platform": "linux",
    }


@dataclass(frozen=True)
class Project:
    """What device-archive needs from pyproject.toml: requires-python and the extras."""

    requires_python: str
    extras: dict[str, list[str]]

    @classmethod
    def read(cls, root: Path) -> Project:
        data = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["project"]
        return cls(data["requires-python"], dict(data.get("optional-dependencies", {})))

    def _requirements(self, extra: str) -> list[Requirement]:
        packaging = _packaging()
        if extra not in self.extras:
            raise ArchiveError(f"pyproject.toml has no [{extra}] extra")
        return [packaging.requirements.Requirement(line) for line in self.extras[extra]]

    def runtime_requirement(self, runtime: RuntimeName) -> str:
        """The runtime's requirement as its extra states it, without a marker (``==2.14.0``)."""
        dist, extra = RUNTIME_DISTS[runtime]
        for req in self._requirements(extra):
            if _normalize(req.name) == dist:
                return f"{req.name}{req.specifier}"
        raise ArchiveError(f"pyproject.toml's [{extra}] extra does not name {dist}")

    def agent_requirements(self, target: Target, runtimes: Sequence[RuntimeName]) -> list[str]:
        """The agent extra for the target: markers evaluated for it, the runtimes replaced by
        ``runtimes`` (so a forced runtime is what gets installed, whatever the markers say)."""
        runtime_dists = {dist for dist, _ in RUNTIME_DISTS.values()}
        environment = {**target_environment(target), "extra": "agent"}
        out = []
        for req in self._requirements("agent"):
            if _normalize(req.name) in runtime_dists:
                continue
            if req.marker is None or req.marker.evaluate(environment):
                out.append(f"{req.name}{req.specifier}")
        return out + [self.runtime_requirement(runtime) for runtime in runtimes]

    def check_python(self, target: Target) -> None:
        specifier = _packaging().specifiers.SpecifierSet(self.requires_python)
        if f"{target.python}.0" not in specifier:
            raise ArchiveError(
                f"edgefleet runs on Python {self.requires_python} (requires-python), not {target.python}: "
                "3.11 is the oldest with tomllib; 3.13 has no numpy<2 wheel (see docs/install.md, Platforms)"
            )


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Plan:
    """What an archive for one target installs, decided before anything is downloaded."""

    target: Target
    runtimes: tuple[RuntimeName, ...]
    reason: str
    requirements: tuple[str, ...]
    """The agent's requirements for the target (markers evaluated for it), runtimes included."""

    @property
    def extras(self) -> list[str]:
        return ["agent", "litert"] if "litert" in self.runtimes else ["agent"]


def plan_archive(
    target: Target,
    *,
    runtime: str = "auto",
    litert: bool = False,
    wheelhouse: Path | None = None,
    project: Project | None = None,
) -> Plan:
    """Choose the runtime(s) for ``target`` and list what the device installs.

    ``runtime``: ``auto`` takes tflite-runtime where it has a wheel for the target (architecture,
    Python, glibc; asked of the registry), else LiteRT; ``tflite-runtime`` or ``litert`` force one.
    ``litert`` adds LiteRT beside tflite-runtime."""
    if runtime not in RUNTIME_CHOICES:
        raise ArchiveError(f"runtime {runtime!r} is not one of {', '.join(RUNTIME_CHOICES)}")
    if target.arch == "armv7l" and wheelhouse is None:
        missing = ", ".join(ARMV7L_MISSING)
        raise ArchiveError(
            f"armv7l: {missing} publish no armv7l wheels on PyPI, so the agent cannot be resolved for it. "
            f"Build them on an armv7l device with Python {target.python} (pip wheel --wheel-dir wheelhouse "
            f"'numpy<2' psutil cffi), copy that folder here and pass --wheelhouse DIR (see docs/install.md)"
        )
    wants_litert = litert or runtime == "litert"
    if wants_litert and target.arch not in LITERT_ARCHES:
        raise ArchiveError(
            f"LiteRT (ai-edge-litert) publishes no {target.arch} wheels; use --runtime tflite-runtime, "
            "without --litert"
        )
    project = project or Project.read(source_root())
    project.check_python(target)
    tflite = project.runtime_requirement("tflite-runtime")
    where = f"{target.arch}, Python {target.python}, glibc <= {target.glibc}"
    primary: RuntimeName
    if runtime == "litert":
        primary, reason = "litert", "forced (--runtime litert)"
    elif has_wheel(target, tflite, wheelhouse):
        primary = "tflite-runtime"
        reason = (
            "forced (--runtime tflite-runtime)" if runtime != "auto" else f"{tflite} has a wheel for {where}"
        )
    elif runtime == "tflite-runtime":
        raise ArchiveError(f"{tflite} publishes no wheel for {where}: use --runtime litert (or auto)")
    elif target.arch in LITERT_ARCHES:
        primary, reason = "litert", f"{tflite} publishes no wheel for {where}: LiteRT instead"
    else:
        raise ArchiveError(f"{tflite} publishes no wheel for {where}, and LiteRT none for {target.arch}")
    runtimes: tuple[RuntimeName, ...] = (primary,)
    if litert and primary != "litert":
        runtimes += ("litert",)
    requirements = tuple(project.agent_requirements(target, runtimes))
    return Plan(target=target, runtimes=runtimes, reason=reason, requirements=requirements)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _pins(wheels: list[Path]) -> list[str]:
    pins = []
    for wheel in wheels:
        match = _WHEEL_NAME.match(wheel.name)
        if match is None:
            raise ArchiveError(f"{wheel.name} is not a wheel file name")
        pins.append(f"{match.group('name')}=={match.group('version')}")
    return pins


def build_archive(
    target: Target,
    out_dir: Path,
    *,
    runtime: str = "auto",
    litert: bool = False,
    with_packages: list[str] | None = None,
    constraints: Path | None = None,
    wheelhouse: Path | None = None,
) -> Path:
    """Build the archive for ``target`` into ``out_dir`` and return its path."""
    root = source_root()
    plan = plan_archive(target, runtime=runtime, litert=litert, wheelhouse=wheelhouse)
    if wheelhouse is not None and not wheelhouse.is_dir():
        raise ArchiveError(f"--wheelhouse {wheelhouse} is not a folder")
    extra_packages = list(with_packages or [])
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgefleet-archive-") as tmp:
        wheels_dir = Path(tmp) / "wheels"
        wheels_dir.mkdir()
        edgefleet_wheel = build_edgefleet_wheel(root, wheels_dir)
        version = _pins([edgefleet_wheel])[0].split("==")[1]
        requirements = [*plan.requirements, *extra_packages]
        download_wheels(
            target, edgefleet_wheel, requirements, wheels_dir, constraints=constraints, wheelhouse=wheelhouse
        )
        wheels = sorted(wheels_dir.glob("*.whl"))
        needs = [g for g in (wheel_glibc(w.name) for w in wheels) if g is not None]
        glibc_min = max(needs) if needs else (2, 17)
        name = f"edgefleet-agent-{version}-{target.stem}"
        top = Path(tmp) / name
        top.mkdir()
        shutil.move(str(wheels_dir), top / "wheels")
        for dest, src in PACKAGING_FILES.items():
            (top / dest).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / src, top / dest)
        (top / "install.sh").chmod(0o755)
        # No extras and no markers: the device installs exactly the list chosen for it here.
        (top / "requirements.txt").write_text("\n".join([f"edgefleet=={version}", *requirements]) + "\n")
        (top / "constraints.txt").write_text("\n".join(_pins(sorted((top / "wheels").glob("*.whl")))) + "\n")
        info: dict[str, Any] = {
            "edgefleet": version,
            "arch": target.arch,
            "python": target.python,
            "glibc_target": target.glibc,
            "glibc_min": f"{glibc_min[0]}.{glibc_min[1]}",
            "extras": plan.extras,
            "runtimes": list(plan.runtimes),
            "runtime_reason": plan.reason,
            "requirements": list(plan.requirements),
            "with": extra_packages,
            "wheelhouse": wheelhouse is not None,
            "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        (top / "archive.json").write_text(json.dumps(info, indent=2) + "\n")
        sums = [f"{_sha256(p)}  {p.relative_to(top)}" for p in sorted(top.rglob("*")) if p.is_file()]
        (top / "SHA256SUMS").write_text("\n".join(sums) + "\n")
        archive = out_dir / f"{name}.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(top, arcname=name)
    return archive


def register(commands: Any) -> None:
    """Add ``edgefleet device-archive`` to the ``edgefleet`` parser."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "device-archive",
        help="build an archive that installs the agent on a device with no network",
        description=(
            "Build, on a machine that reaches the package registries, one .tar.gz that installs the "
            "agent on a device offline: the edgefleet wheel built from this checkout, every wheel the "
            "agent needs on the target, the systemd unit and install.sh. On the device: unpack it and "
            "run ./install.sh --config agent.toml --trusted-key operator.pub (see docs/install.md)."
        ),
    )
    parser.add_argument("--arch", choices=ARCHES, required=True, help="the device's CPU (uname -m)")
    parser.add_argument(
        "--python", default="3.11", help="the device's Python, MAJOR.MINOR: 3.11 or 3.12 (default 3.11)"
    )
    parser.add_argument(
        "--glibc", default=DEFAULT_GLIBC, help=f"the device's glibc (ldd --version; default {DEFAULT_GLIBC})"
    )
    parser.add_argument(
        "--runtime",
        choices=RUNTIME_CHOICES,
        default="auto",
        help="the TFLite runtime: auto (default) takes tflite-runtime where it has a wheel for the "
        "target, else LiteRT (ai-edge-litert); or force one",
    )
    parser.add_argument(
        "--litert", action="store_true", help="also ship LiteRT beside tflite-runtime (not on armv7l)"
    )
    parser.add_argument(
        "--wheelhouse",
        type=Path,
        default=None,
        metavar="DIR",
        help="a folder of extra wheels to take first, e.g. numpy, psutil and cffi built on an armv7l "
        "device with pip wheel (armv7l needs it)",
    )
    parser.add_argument(
        "--with",
        dest="with_packages",
        action="append",
        default=[],
        metavar="REQUIREMENT",
        help="one more requirement to ship and install, e.g. pytest (repeatable)",
    )
    parser.add_argument(
        "--constraint",
        type=Path,
        default=None,
        metavar="FILE",
        help="pip constraints file pinning versions (default: the newest the target accepts)",
    )
    parser.add_argument("--out", type=Path, default=Path("dist"), help="output folder (default ./dist)")
    parser.set_defaults(handler=_run_command)


def _run_command(args: argparse.Namespace) -> int:
    target = Target(arch=args.arch, python=args.python, glibc=args.glibc)
    archive = build_archive(
        target,
        args.out,
        runtime=args.runtime,
        litert=args.litert,
        with_packages=args.with_packages,
        constraints=args.constraint,
        wheelhouse=args.wheelhouse,
    )
    with tarfile.open(archive) as tar:
        member = tar.extractfile(archive.name.removesuffix(".tar.gz") + "/archive.json")
        runtimes = json.load(member)["runtimes"] if member else []
    size_mib = archive.stat().st_size / (1 << 20)
    folder = archive.name.removesuffix(".tar.gz")
    print(
        f"{archive} ({size_mib:.1f} MiB, runtime: {', '.join(runtimes)}); "
        f"on the device: tar xzf {archive.name} && cd {folder} && "
        "sudo ./install.sh --config agent.toml --trusted-key operator.pub"
    )
    return 0
