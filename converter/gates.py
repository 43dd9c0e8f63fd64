"""``--max-drop``: how much worse than the source model a converted model may be."""

from __future__ import annotations

from dataclasses import dataclass

from converter.errors import InputError
from converter.metrics import HIGHER_IS_BETTER, TASK_METRICS
from protocol.manifest import TaskKind, ValidationReport

DEFAULT_AUTO_BUDGET = {
    TaskKind.CLASSIFICATION: "accuracy=0.01",
    TaskKind.REGRESSION: "mae=2%",
    TaskKind.FORECAST: "mae=3%",
}
"""The budget ``--mode auto`` picks within when no ``--max-drop`` is given."""


@dataclass(frozen=True)
class Gate:
    metric: str
    amount: float
    relative: bool
    """``mae=2%``: relative to the source model's value; ``accuracy=0.01``: absolute."""

    def __str__(self) -> str:
        return f"{self.metric}={self.amount * 100:g}%" if self.relative else f"{self.metric}={self.amount:g}"

    def worsening(self, validation: ValidationReport) -> float:
        """How much worse the converted model is, in the gate's units (fraction when relative)."""
        source = validation.metrics[f"{self.metric}_source"]
        converted = validation.metrics[self.metric]
        worse = source - converted if self.metric in HIGHER_IS_BETTER else converted - source
        if self.relative:
            return worse / abs(source) if source else (0.0 if worse <= 0 else float("inf"))
        return worse

    def failure(self, validation: ValidationReport) -> str | None:
        """None when inside the budget, else what went wrong."""
        if f"{self.metric}_source" not in validation.metrics:
            return None
        worse = self.worsening(validation)
        if worse <= self.amount + 1e-12:
            return None
        shown = f"{worse * 100:+.2f}%" if self.relative else f"{worse:+.4f}"
        direction = "dropped" if self.metric in HIGHER_IS_BETTER else "rose"
        return f"{self.metric} {direction} by {shown} (budget {self})"


def parse_gates(specs: list[str], task: TaskKind) -> list[Gate]:
    """``["accuracy=0.01", "mae=2%"]`` -> gates; metric names checked against the task."""
    gates = []
    known = TASK_METRICS[task]
    for spec in specs:
        metric, sep, amount = spec.partition("=")
        metric = metric.strip().lower()
        if not sep or metric not in known:
            raise InputError(
                f"--max-drop {spec!r}: expected METRIC=AMOUNT with METRIC one of {', '.join(known)} "
                f"for {task.value}, e.g. {DEFAULT_AUTO_BUDGET[task]}"
            )
        relative = amount.strip().endswith("%")
        try:
            value = float(amount.strip().rstrip("%"))
        except ValueError:
            raise InputError(f"--max-drop {spec!r}: {amount!r} is not a number (or a percentage)") from None
        if value < 0:
            raise InputError(f"--max-drop {spec!r}: the amount must not be negative")
        gates.append(Gate(metric, value / 100.0 if relative else value, relative))
    return gates
