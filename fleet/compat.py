"""Runtime compatibility as data: can a device's reported runtime load a bundle? Pure, no I/O.

The manifest records, per runtime name, whether the converter loaded and ran the model there and
in which version (``Manifest.runtimes``); a device reports ``"NAME VERSION"`` in its status
(``DeviceStatus.runtime``, e.g. ``tflite-runtime 2.14.0``). The rule:

- the device's runtime name must be one the model **loads** in (``loads: true``);
- the versions must share major and minor (``2.14.0`` and ``2.14.1`` agree, ``2.15.0`` does not):
  patch releases keep the op set, a minor release can add or drop op versions, so anything else was
  never shown to load;
- a side without a version (the manifest's check or the device's report) is judged on the name;
- nothing to judge on (the device never reported a runtime, or the manifest lists no runtime
  check, as bundles made before the checks existed) is **unchecked**: allowed, with a warning,
  because the agent's own smoke test still refuses a model it cannot run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from fleet.errors import ConflictError
from protocol.manifest import RuntimeCheck


class Verdict(StrEnum):
    COMPATIBLE = "compatible"
    UNCHECKED = "unchecked"
    """Allowed, but the fleet had nothing to check: a warning, not a refusal."""
    INCOMPATIBLE = "incompatible"


@dataclass(frozen=True)
class DeviceRuntime:
    """What a device reports in its status: a runtime name and, usually, its version."""

    name: str
    version: str | None = None

    @classmethod
    def parse(cls, reported: str) -> DeviceRuntime:
        """``"tflite-runtime 2.14.0"`` -> name and version; a bare name has no version."""
        name, _, version = reported.strip().partition(" ")
        return cls(name=name, version=version.strip() or None)

    def __str__(self) -> str:
        return self.name if self.version is None else f"{self.name} {self.version}"


@dataclass(frozen=True)
class Compatibility:
    verdict: Verdict
    detail: str
    """One line: why, naming the model's runtimes and the device's."""

    @property
    def allowed(self) -> bool:
        return self.verdict is not Verdict.INCOMPATIBLE


class RuntimeNote(BaseModel):
    """One device and its verdict: skipped by a deployment or rollout (its runtime cannot load the
    model), or unchecked (allowed, nothing to check against)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device_id: str
    runtime: str | None = Field(description="the runtime the device reported, null if never")
    reason: str


class IncompatibleRuntimeError(ConflictError):
    """A model was deployed to a device whose reported runtime cannot load it (409)."""


def _minor(version: str) -> tuple[str, ...]:
    return tuple(version.split(".")[:2])


def describe_runtimes(runtimes: Mapping[str, RuntimeCheck]) -> str:
    """``litert 1.0.1`` (the runtimes the model loads in), or why it loads in none."""
    loads = [
        f"{name} {found.version}" if found.version else name
        for name, found in runtimes.items()
        if found.loads
    ]
    if not loads:
        return "loads in no runtime the converter checked"
    return ("loads only in " if len(loads) < len(runtimes) else "loads in ") + ", ".join(loads)


def check(runtimes: Mapping[str, RuntimeCheck], reported: str | None) -> Compatibility:
    """Whether a model whose manifest lists ``runtimes`` can run where ``reported`` is the runtime."""
    if not runtimes:
        return Compatibility(Verdict.UNCHECKED, "the manifest records no runtime check (an older bundle)")
    if reported is None or not reported.strip():
        return Compatibility(
            Verdict.UNCHECKED, f"the model {describe_runtimes(runtimes)}; the device never reported a runtime"
        )
    device = DeviceRuntime.parse(reported)
    return _judge(
        runtimes.get(device.name),
        f"the model {describe_runtimes(runtimes)}; the device reports {device}",
        device,
    )


def _judge(found: RuntimeCheck | None, where: str, device: DeviceRuntime) -> Compatibility:
    if found is None:
        return Compatibility(Verdict.INCOMPATIBLE, f"{where}, which the converter never checked")
    if not found.loads:
        why = f": {found.error}" if found.error else ""
        return Compatibility(Verdict.INCOMPATIBLE, f"{where}, which failed to load it{why}")
    if found.version is None or device.version is None:
        return Compatibility(Verdict.COMPATIBLE, f"{where} (judged on the name, a version is missing)")
    if _minor(found.version) != _minor(device.version):
        return Compatibility(
            Verdict.INCOMPATIBLE,
            f"{where}: a different minor release than the {found.version} the converter loaded it in",
        )
    return Compatibility(Verdict.COMPATIBLE, where)


def split(
    runtimes: Mapping[str, RuntimeCheck], devices: Mapping[str, str | None]
) -> tuple[list[str], list[RuntimeNote], list[RuntimeNote]]:
    """(compatible or unchecked ids, incompatible devices, unchecked devices) of ``{id: runtime}``."""
    ok: list[str] = []
    skipped: list[RuntimeNote] = []
    unchecked: list[RuntimeNote] = []
    for device_id, reported in devices.items():
        verdict = check(runtimes, reported)
        if not verdict.allowed:
            skipped.append(RuntimeNote(device_id=device_id, runtime=reported, reason=verdict.detail))
            continue
        ok.append(device_id)
        if verdict.verdict is Verdict.UNCHECKED:
            unchecked.append(RuntimeNote(device_id=device_id, runtime=reported, reason=verdict.detail))
    return ok, skipped, unchecked


def refuse(model: str, device_id: str, detail: str) -> IncompatibleRuntimeError:
    """The 409 for a deployment to one device its runtime cannot serve."""
    return IncompatibleRuntimeError(
        f"{model} cannot run on {device_id}: {detail}; convert or bundle it for that runtime "
        "(edgefleet bundle --runtime), or change the device's [runtime] kind"
    )
