"""``update.json``: the machine's state and what it needs to resume, saved before every step."""

from __future__ import annotations

import logging
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from agent.store import ActivePointer, write_json
from protocol.messages import DesiredModel
from protocol.schema import ModelRef
from protocol.update_state import UpdateState

log = logging.getLogger(__name__)


class InvokeSummary(BaseModel):
    """A model's invoke time per instance over a sample of requests (``agent.update.probation``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    count: int
    """Timed requests in the sample."""
    median_ms: float
    low_ms: float
    """A lower bound of the median at the sample's confidence (distribution-free, order statistics)."""
    high_ms: float
    """An upper bound of the median, likewise."""
    cpu_ms: float | None = None
    """Mean CPU time per instance of the serving thread, when measured."""
    fast_ms: float | None = None
    """The 10th percentile: the invoke time when nothing else interferes (what probation judges)."""
    fast_low_ms: float | None = None
    fast_high_ms: float | None = None
    """95% bounds of the 10th percentile, as ``low_ms``/``high_ms`` are of the median."""
    cpu_count: int = 0
    """Timed requests with a CPU time (the serving thread's, ``time.thread_time``)."""
    cpu_fast_ms: float | None = None
    """The 10th percentile of the CPU time per instance, and its 95% bounds."""
    cpu_fast_low_ms: float | None = None
    cpu_fast_high_ms: float | None = None


class SideBySide(BaseModel):
    """The new model's cost over the previous one's, measured in turns at activation
    (``agent.update.side_by_side``): medians of the per-pair ratios and their 95% bounds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pairs: int
    cpu_ratio: float
    """New over previous CPU time of the timing thread (``time.thread_time``), per pair."""
    cpu_low: float
    cpu_high: float
    wall_ratio: float
    """New over previous wall time inside the runtime, per pair."""
    wall_low: float
    wall_high: float
    cpu_share: float
    """The median share of the wall time the thread's CPU time covers (the lower of the two
    models'): well below 1, the work happens where thread CPU time does not see it."""


class UpdateRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    state: UpdateState | None = UpdateState.IDLE
    """None: the saved record was unreadable (a corrupt or future one); it resumes as rollback."""
    state_saves: int = 0
    """Times this state has been saved in a row: more than one means the process restarted in it."""
    update_id: str | None = None
    target: DesiredModel | None = None
    prior: ActivePointer | None = None
    """The active pointer when the update began: what a rollback restores."""
    previous_ref: ModelRef | None = None
    previous_p50_ms: float | None = None
    """The previous model's recent p50 request latency in this process when the new one was
    activated: logged beside the verdict, not judged (it includes queueing)."""
    previous_invoke: InvokeSummary | None = None
    """The previous model's recent invoke time when the new one was activated: probation judges
    the new model's against it."""
    side_by_side: SideBySide | None = None
    """The two models measured in turns at activation, before the swap; None when not measured."""
    reason: str | None = None
    """Why the update is rolling back or failed."""
    failed_sha256: str | None = None
    """A bundle that failed; not retried until the desired state names another."""
    failed_reason: str | None = None

    @field_validator("state", mode="before")
    @classmethod
    def _unknown_state_rolls_back(cls, value: object) -> object:
        """A state this agent does not know (a newer agent's record, a damaged value) becomes None,
        keeping the rest of the record: the rollback still knows what to restore."""
        if isinstance(value, str) and value not in {s.value for s in UpdateState}:
            log.error("update.json names an unknown update state %r: resuming as a rollback", value)
            return None
        return value


class RecordFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> UpdateRecord:
        try:
            return UpdateRecord.model_validate_json(self.path.read_bytes())
        except FileNotFoundError:
            return UpdateRecord()
        except (OSError, ValidationError) as exc:
            log.error("%s is unreadable (%s): resuming as a rollback", self.path, exc)
            return UpdateRecord(state=None)

    def save(self, record: UpdateRecord) -> None:
        write_json(self.path, record.model_dump(mode="json"))
