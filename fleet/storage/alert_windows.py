"""The telemetry windows one alert run judges, from the stored cursor (``alert_cursor``).

Which windows a run judges, in id order (ids grow as windows are stored):

- no row yet (the first run ever): each device's newest window, then the table from its newest id
  on, as before the cursor was stored, so a new fleet does not judge a whole history at once;
- windows after the cursor, at most ``limit`` a run in pages of ``page`` (a long outage's backlog
  is judged over the next runs, none skipped); the cursor's own window may be gone (retention),
  the ids after it are still the ones not judged;
- ids that started again below the cursor: SQLite reuses the ids of the newest rows once they are
  deleted (retention folded the table's end away), and a restored table may be behind. Seen as a
  cursor above every stored id, or a different window (another receive time) under the cursor's id.
  The run then goes on from the first window received after the cursor's window.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

from sqlalchemy import Connection, func, select

from fleet.storage import alerts as store
from fleet.storage.alert_cursor import Cursor, received_at
from fleet.storage.schema import telemetry

log = logging.getLogger(__name__)


def _restarted(conn: Connection, cursor: Cursor, newest: int) -> bool:
    """Whether the ids started again below ``cursor`` (see the module's docstring)."""
    if cursor.window_id > newest:
        return True
    under = received_at(conn, cursor.window_id)
    return under is not None and cursor.received_at is not None and under != cursor.received_at


def _resume_point(conn: Connection, cursor: Cursor, newest: int) -> int:
    """After ids started again: just before the first window received after the cursor's."""
    if cursor.received_at is None:
        return 0
    first = conn.execute(
        select(func.min(telemetry.c.id)).where(telemetry.c.received_at > cursor.received_at)
    ).scalar()
    return int(first) - 1 if first is not None else newest


@dataclass
class Windows:
    """The windows one run judges, from the stored cursor; ``position`` is where the cursor stands
    after the windows taken so far (store it in the run's transaction)."""

    start: Cursor | None
    page: int
    limit: int
    position: int = field(init=False, default=0)

    def read(self, conn: Connection) -> Iterator[store.WindowObs]:
        newest = store.newest_window_id(conn)
        if self.start is None:
            self.position = newest
            for window in store.latest_windows(conn):
                self.position = max(self.position, window.id)  # one stored since ``newest``
                yield window
            return
        self.position = self.start.window_id
        if _restarted(conn, self.start, newest):
            self.position = _resume_point(conn, self.start, newest)
            log.warning(
                "alert cursor: the telemetry ids started again below window %d (retention deleted the "
                "newest windows, or the table was restored): going on after window %d, the first "
                "received after the cursor's",
                self.start.window_id,
                self.position,
            )
        seen = 0
        while seen < self.limit:
            page = store.windows_after(conn, self.position, min(self.page, self.limit - seen))
            for window in page:
                self.position = window.id
                yield window
            seen += len(page)
            if len(page) < self.page:
                return
