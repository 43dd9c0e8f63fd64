"""What one telemetry window shows each alert rule, and the words an opened alert carries."""

from __future__ import annotations

from fleet.storage import alerts as store
from fleet.storage.records import Finding


def window_values(window: store.WindowObs) -> dict[str, float | None]:
    rate = window.errors / window.requests if window.requests else 0.0
    return {
        "latency_p95": window.latency_p95,
        "error_rate": rate,
        "drift_psi": window.drift_psi,
        "out_of_range_share": window.out_of_range_share,
        "input_drift": window.input_drift,
        "stuck_features": window.stuck_features,
        "output_drift": window.output_drift,
        "low_confidence_share": window.low_confidence_share,
    }


def describe(rule: str, device_id: str, value: float, threshold: float) -> Finding:
    severity = "critical" if rule == "error_rate" else "warning"
    text = {
        "offline": f"{device_id} silent for {value:.0f} min (> {threshold:g} min)",
        "latency_p95": f"{device_id} p95 latency {value:.1f} ms > {threshold:g} ms",
        "error_rate": f"{device_id} error rate {value:.1%} > {threshold:.1%}",
        "drift_psi": f"{device_id} drift PSI {value:.2f} > {threshold:g}",
        "out_of_range_share": f"{device_id} inputs out of range {value:.1%} > {threshold:.1%}",
        "input_drift": f"{device_id} input drift significance {value:.1f} > {threshold:g}",
        "stuck_features": f"{device_id} {value:.0f} input features stuck (> {threshold:g})",
        "output_drift": f"{device_id} output drift significance {value:.1f} > {threshold:g}",
        "low_confidence_share": f"{device_id} low-confidence predictions {value:.1%} > {threshold:.1%}",
    }[rule]
    return Finding(rule, device_id, severity, text, value)
