"""``edgefleet device-archive``: one self-contained archive that installs the agent offline.

On the operator's machine (which reaches the package registries) it builds, for one target
(CPU architecture, Python version, glibc), a ``.tar.gz`` holding

* ``wheels/``: the edgefleet wheel built from this source tree and every wheel the agent extra
  needs on the target, resolved by ``pip download --platform ... --only-binary=:all:``;
* ``requirements.txt`` (what to install) and ``constraints.txt`` (every wheel pinned), so the
  device installs exactly what was resolved here, with ``pip --no-index``;
* ``SHA256SUMS`` and ``archive.json`` (target, versions, the oldest glibc the wheels accept);
* ``install.sh``, the systemd unit, the sysusers.d entry and the docs.

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
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from protocol.errors import EdgefleetError

ARCHES = ("aarch64", "armv7l", "x86_64")
# Debian 12 (bookworm) and Raspberry Pi OS 12 ship glibc 2.36.
DEFAULT_GLIBC = "2.36"
# What the agent extra runs on per architecture: LiteRT publishes no armv7l wheels.
LITERT_ARCHES = ("aarch64", "x86_64")
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


def download_wheels(
    target: Target,
    edgefleet_wheel: Path,
    extras: list[str],
    with_packages: list[str],
    out: Path,
    *,
    constraints: Path | None = None,
) -> None:
    """``pip download`` the agent's dependencies for the target, binary wheels only."""
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
    if constraints is not None:
        command += ["--constraint", str(constraints)]
    command += [f"{edgefleet_wheel}[{','.join(extras)}]", *with_packages]
    what = f"resolving the agent's wheels for {target.arch}, Python {target.python}, glibc {target.glibc}"
    _run(command, what)


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
    litert: bool = False,
    with_packages: list[str] | None = None,
    constraints: Path | None = None,
) -> Path:
    """Build the archive for ``target`` into ``out_dir`` and return its path."""
    root = source_root()
    extras = ["agent"]
    if litert:
        if target.arch not in LITERT_ARCHES:
            raise ArchiveError(
                f"LiteRT (ai-edge-litert) publishes no {target.arch} wheels; build without --litert"
            )
        extras.append("litert")
    if target.python != "3.11":
        raise ArchiveError(
            f"edgefleet needs Python 3.11 (requires-python; tflite-runtime 2.14 has wheels for 3.9-3.11 and "
            f"the agent uses tomllib), not {target.python}: see docs/install.md"
        )
    extra_packages = list(with_packages or [])
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgefleet-archive-") as tmp:
        wheels_dir = Path(tmp) / "wheels"
        wheels_dir.mkdir()
        edgefleet_wheel = build_edgefleet_wheel(root, wheels_dir)
        version = _pins([edgefleet_wheel])[0].split("==")[1]
        download_wheels(target, edgefleet_wheel, extras, extra_packages, wheels_dir, constraints=constraints)
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
        requirement = f"edgefleet[{','.join(extras)}]=={version}"
        (top / "requirements.txt").write_text("\n".join([requirement, *extra_packages]) + "\n")
        (top / "constraints.txt").write_text("\n".join(_pins(sorted((top / "wheels").glob("*.whl")))) + "\n")
        info: dict[str, Any] = {
            "edgefleet": version,
            "arch": target.arch,
            "python": target.python,
            "glibc_target": target.glibc,
            "glibc_min": f"{glibc_min[0]}.{glibc_min[1]}",
            "extras": extras,
            "with": extra_packages,
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
    parser.add_argument("--python", default="3.11", help="the device's Python, MAJOR.MINOR (default 3.11)")
    parser.add_argument(
        "--glibc", default=DEFAULT_GLIBC, help=f"the device's glibc (ldd --version; default {DEFAULT_GLIBC})"
    )
    parser.add_argument("--litert", action="store_true", help="add LiteRT (ai-edge-litert; not on armv7l)")
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
        target, args.out, litert=args.litert, with_packages=args.with_packages, constraints=args.constraint
    )
    size_mib = archive.stat().st_size / (1 << 20)
    folder = archive.name.removesuffix(".tar.gz")
    print(
        f"{archive} ({size_mib:.1f} MiB); on the device: tar xzf {archive.name} && cd {folder} && "
        "sudo ./install.sh --config agent.toml --trusted-key operator.pub"
    )
    return 0
