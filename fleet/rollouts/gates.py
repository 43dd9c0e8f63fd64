"""Judge one wave from its devices' telemetry. Pure: numbers in, gate results out.

Only devices that reached the model (serving or committed it) are judged, and a device's windows
count once it has the per-device minimum; the gates give no verdict until the counted devices
together hold the per-wave minimum. Every verdict states the measured value beside its limit and
the sample it was measured on.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from fleet.rollout_spec import GateResult, Gates
from fleet.storage.records import WindowFigures


@dataclass(frozen=True)
class WaveHealth:
    """What the counted devices of a wave reported on the new model since the rollout started."""

    devices: int
    """Devices counted: reached the model and hold the per-device minimum sample."""
    reached: int
    offline: int
    """Reached devices offline now."""
    short: list[str] = field(default_factory=list)
    """Online reached devices below the per-device minimum, with their sample."""
    windows: int = 0
    requests: int = 0
    errors: int = 0
    latency_p95: list[float] = field(default_factory=list)
    baseline_p95: list[float] = field(default_factory=list)
    """Window p95s of the same devices on the model they ran before the rollout."""
    drift_psi: list[float] = field(default_factory=list)
    low_confidence_share: list[float] = field(default_factory=list)
    out_of_range_share: list[float] = field(default_factory=list)
    drift_tested: int = 0
    """Windows that carried a drift test (input or output significance, or stuck features)."""
    drifted: int = 0
    """Of those, the windows above ``Gates.drift_significance`` or with a stuck feature."""

    @property
    def sample(self) -> str:
        return f"over {self.windows:,} windows / {self.requests:,} requests"


def health(
    gates: Gates,
    per_device: dict[str, list[WindowFigures]],
    baseline_p95: list[float],
    offline: set[str],
) -> WaveHealth:
    """Sum the windows of the reached devices that hold the per-device minimum."""
    counted: list[WindowFigures] = []
    devices = 0
    short: list[str] = []
    for device_id, windows in sorted(per_device.items()):
        requests = sum(w.requests for w in windows)
        if len(windows) >= gates.min_windows_per_device and requests >= gates.min_requests_per_device:
            devices += 1
            counted += windows
        elif device_id not in offline:
            short.append(f"{device_id}: {len(windows)} windows / {requests:,} requests")
    return WaveHealth(
        devices=devices,
        reached=len(per_device),
        offline=len(offline & set(per_device)),
        short=short,
        windows=len(counted),
        requests=sum(w.requests for w in counted),
        errors=sum(w.errors for w in counted),
        latency_p95=[w.latency_p95 for w in counted if w.latency_p95 is not None],
        baseline_p95=baseline_p95,
        drift_psi=[w.drift_psi for w in counted if w.drift_psi is not None],
        low_confidence_share=[w.low_confidence_share for w in counted if w.low_confidence_share is not None],
        out_of_range_share=[w.out_of_range_share for w in counted if w.out_of_range_share is not None],
        drift_tested=sum(_tested(w) for w in counted),
        drifted=sum(_drifted(gates, w) for w in counted),
    )


def _tested(window: WindowFigures) -> bool:
    return any(v is not None for v in (window.input_drift, window.output_drift, window.stuck_features))


def _drifted(gates: Gates, window: WindowFigures) -> bool:
    significant = any(
        v is not None and v > gates.drift_significance for v in (window.input_drift, window.output_drift)
    )
    return significant or bool(window.stuck_features)


def too_little(gates: Gates, wave: WaveHealth, *, waited_out: bool = False) -> str | None:
    """None when the gates may judge; else what the sample lacks. Once the wave ``waited_out`` its
    sample time, devices below the per-device minimum no longer hold it up (they are not counted)."""
    if wave.short and not waited_out:
        more = f" and {len(wave.short) - 3} more" if len(wave.short) > 3 else ""
        return (
            f"devices below the per-device minimum of {gates.min_windows_per_device} windows / "
            f"{gates.min_requests_per_device:,} requests: {'; '.join(wave.short[:3])}{more}"
        )
    if wave.windows < gates.min_windows_per_wave or wave.requests < gates.min_requests_per_wave:
        return (
            f"{wave.windows:,} windows / {wave.requests:,} requests from {wave.devices} devices, "
            f"below the per-wave minimum of {gates.min_windows_per_wave} / {gates.min_requests_per_wave:,}"
        )
    return None


def _verdict(ok: bool, what: str, value: str, limit: str) -> str:
    return f"{what} {value} {'<=' if ok else '>'} {limit}"


def rollback_gate(gates: Gates, failures: list[str]) -> GateResult:
    count = len(failures)
    ok = count <= gates.max_rollbacks
    listed = "; ".join(failures[:3]) or "no device failed"
    return GateResult(
        gate="rollbacks",
        ok=ok,
        value=count,
        limit=gates.max_rollbacks,
        detail=f"{_verdict(ok, 'failed devices', str(count), str(gates.max_rollbacks))} ({listed})",
    )


def evaluate(gates: Gates, wave: WaveHealth, failures: list[str]) -> list[GateResult]:
    """Every gate, judged on the counted devices; a gate without data says so and passes."""
    results = [rollback_gate(gates, failures)]

    share = wave.offline / wave.reached if wave.reached else 0.0
    ok = share <= gates.max_offline_share
    results.append(
        GateResult(
            gate="offline_share",
            ok=ok,
            value=share,
            limit=gates.max_offline_share,
            detail=f"{_verdict(ok, 'offline share', f'{share:.2f}', f'{gates.max_offline_share:.2f}')}"
            f" ({wave.offline} of {wave.reached} devices that reached the model are offline)",
        )
    )
    results.append(_latency(gates, wave))

    rate = wave.errors / wave.requests if wave.requests else 0.0
    ok = rate <= gates.max_error_rate
    results.append(
        GateResult(
            gate="error_rate",
            ok=ok,
            value=rate,
            limit=gates.max_error_rate,
            detail=f"{_verdict(ok, 'error rate', f'{rate:.4f}', f'{gates.max_error_rate:.4f}')} "
            f"({wave.errors:,} failed) {wave.sample}",
        )
    )
    for gate, what, values, limit in (
        ("drift_psi", "mean drift PSI", wave.drift_psi, gates.max_drift_psi),
        ("low_confidence_share", "mean low-confidence share", wave.low_confidence_share,
         gates.max_low_confidence_share),
        ("out_of_range_share", "mean out-of-range share", wave.out_of_range_share,
         gates.max_out_of_range_share),
    ):  # fmt: skip
        if values:
            mean = statistics.fmean(values)
            ok = mean <= limit
            detail = f"{_verdict(ok, what, f'{mean:.3f}', f'{limit:.3f}')} {wave.sample}"
            results.append(GateResult(gate=gate, ok=ok, value=mean, limit=limit, detail=detail))
        else:
            results.append(
                GateResult(
                    gate=gate,
                    ok=True,
                    value=None,
                    limit=limit,
                    detail=f"not judged: no window reported it ({wave.windows:,} windows counted)",
                )
            )
    results.append(_drift(gates, wave))
    return results


def _drift(gates: Gates, wave: WaveHealth) -> GateResult:
    limit = gates.max_drifted_share
    if not wave.drift_tested:
        detail = f"not judged: no window carried a drift test ({wave.windows:,} windows counted)"
        return GateResult(gate="drifted_share", ok=True, value=None, limit=limit, detail=detail)
    share = wave.drifted / wave.drift_tested
    ok = share <= limit
    return GateResult(
        gate="drifted_share",
        ok=ok,
        value=share,
        limit=limit,
        detail=f"{_verdict(ok, 'drifted window share', f'{share:.2f}', f'{limit:.2f}')} ({wave.drifted} of "
        f"{wave.drift_tested} tested windows above significance {gates.drift_significance:g} or with a "
        f"stuck feature) {wave.sample}",
    )


def _latency(gates: Gates, wave: WaveHealth) -> GateResult:
    limit = gates.max_latency_p95_ratio
    if not (wave.latency_p95 and wave.baseline_p95):
        return GateResult(
            gate="latency_p95_ratio",
            ok=True,
            value=None,
            limit=limit,
            detail="not judged: no latency from the previous model or the new one",
        )
    new = statistics.median(wave.latency_p95)
    old = statistics.median(wave.baseline_p95)
    ratio = new / old if old > 0 else (1.0 if new == 0 else float("inf"))
    ok = ratio <= limit
    return GateResult(
        gate="latency_p95_ratio",
        ok=ok,
        value=ratio,
        limit=limit,
        detail=f"{_verdict(ok, 'p95 ratio', f'{ratio:.2f}', f'{limit:.2f}')} (median window p95 "
        f"{new:.2f} ms vs {old:.2f} ms on the previous model) {wave.sample}",
    )
