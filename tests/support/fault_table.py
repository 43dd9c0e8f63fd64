"""The update engine's fault table: every acting state x {exception, hang, kill} with the chain of
states the agent must report, shared by the in-process fault tests (``tests/agent/
test_update_faults.py``: raise, hang) and the real-process kills (``tests/agent/test_kills.py``).

Assertions here carry their own messages: pytest rewrites asserts in test modules only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest

from agent.update import State
from protocol.messages import UpdateEvent
from protocol.update_state import FAILED_INSTALL_STATES

# -- faults in every state, as one table ---------------------------------------------------------
# v1 serves; the fleet wants "v2" (or "smoke_bad", whose smoke test fails, to reach rollback and
# failed). The fault strikes right after the state was saved, before it acts:
#   raise: the state's step fails;
#   hang:  the state waits until the agent stops (SIGTERM's path), then the agent starts again;
#   kill:  the real agent process is killed with SIGKILL there and started again (test_kills.py).
# ``chain`` is every update event reported, in order, over both lives of the agent: a resumed
# state is reported again. ``reason``: in the final ``failed`` event's reason.

D, V, ST, SM, A, P, C, R, F = (
    State.DOWNLOAD,
    State.VERIFY,
    State.STAGE,
    State.SMOKE,
    State.ACTIVATE,
    State.PROBATION,
    State.COMMIT,
    State.ROLLBACK,
    State.FAILED,
)
Fault = Literal["raise", "hang", "kill"]
FAULTS: tuple[Fault, ...] = ("raise", "hang", "kill")
OLD, NEW = "1.0.0", "2.0.0"
SMOKE_FAILED = "smoke test failed"
INJECTED = "fault injection"


@dataclass(frozen=True)
class FaultCase:
    state: State
    fault: Fault
    chain: tuple[State, ...]
    serving: str
    reason: str | None = None
    bundle: str = "v2"

    @property
    def id(self) -> str:
        return f"{self.fault}-{self.state}"


FAULT_TABLE: tuple[FaultCase, ...] = (
    FaultCase(D, "raise", (D, R, F), OLD, INJECTED),
    FaultCase(D, "hang", (D, D, V, ST, SM, A, P, C), NEW),
    FaultCase(D, "kill", (D, D, V, ST, SM, A, P, C), NEW),
    FaultCase(V, "raise", (D, V, R, F), OLD, INJECTED),
    FaultCase(V, "hang", (D, V, V, ST, SM, A, P, C), NEW),
    FaultCase(V, "kill", (D, V, V, ST, SM, A, P, C), NEW),
    FaultCase(ST, "raise", (D, V, ST, R, F), OLD, INJECTED),
    FaultCase(ST, "hang", (D, V, ST, ST, SM, A, P, C), NEW),
    FaultCase(ST, "kill", (D, V, ST, ST, SM, A, P, C), NEW),
    FaultCase(SM, "raise", (D, V, ST, SM, R, F), OLD, INJECTED),
    FaultCase(SM, "hang", (D, V, ST, SM, SM, A, P, C), NEW),
    FaultCase(SM, "kill", (D, V, ST, SM, SM, A, P, C), NEW),
    # An interrupted activation rolls back at start-up: the new model may be what killed us.
    FaultCase(A, "raise", (D, V, ST, SM, A, R, F), OLD, INJECTED),
    FaultCase(A, "hang", (D, V, ST, SM, A, R, F), OLD, "stopped or died in state activate"),
    FaultCase(A, "kill", (D, V, ST, SM, A, R, F), OLD, "stopped or died in state activate"),
    # Probation is counted again at start-up (a crash loop is caught there), watched again later.
    FaultCase(P, "raise", (D, V, ST, SM, A, P, R, F), OLD, INJECTED),
    FaultCase(P, "hang", (D, V, ST, SM, A, P, P, C), NEW),
    FaultCase(P, "kill", (D, V, ST, SM, A, P, P, C), NEW),
    # The switch is done: a failing commit is logged, the new model stays.
    FaultCase(C, "raise", (D, V, ST, SM, A, P, C), NEW),
    FaultCase(C, "hang", (D, V, ST, SM, A, P, C, C), NEW),
    FaultCase(C, "kill", (D, V, ST, SM, A, P, C, C), NEW),
    FaultCase(R, "raise", (D, V, ST, SM, R, F), OLD, f"then rollback failed: {INJECTED}", "smoke_bad"),
    FaultCase(R, "hang", (D, V, ST, SM, R, R, F), OLD, SMOKE_FAILED, "smoke_bad"),
    FaultCase(R, "kill", (D, V, ST, SM, R, R, F), OLD, SMOKE_FAILED, "smoke_bad"),
    FaultCase(F, "raise", (D, V, ST, SM, R, F), OLD, SMOKE_FAILED, "smoke_bad"),
    FaultCase(F, "hang", (D, V, ST, SM, R, F, F), OLD, SMOKE_FAILED, "smoke_bad"),
    FaultCase(F, "kill", (D, V, ST, SM, R, F, F), OLD, SMOKE_FAILED, "smoke_bad"),
)


def fault_cases(*faults: Fault) -> list[object]:
    return [pytest.param(case, id=case.id) for case in FAULT_TABLE if case.fault in faults]


def check_reported(case: FaultCase, events: list[UpdateEvent]) -> None:
    """The events say what happened: the chain in order, ``ok`` false only when it failed."""
    assert tuple(e.state for e in events) == case.chain, [e.state.value for e in events]
    oks = [(e.state.value, e.ok) for e in events]
    assert all(e.ok == (e.state not in FAILED_INSTALL_STATES) for e in events), oks
    updates = {e.update_id for e in events}
    assert len(updates) == 1, updates  # one update, across both lives
    last = events[-1]
    if case.reason is None:
        assert last.state is State.COMMIT, last
    else:
        assert last.state is State.FAILED and last.reason is not None and case.reason in last.reason, last
