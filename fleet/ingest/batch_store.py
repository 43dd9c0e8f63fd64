"""One batch into the database: one transaction, retried with backoff while the database is
unavailable (the batch unacknowledged meanwhile), or message by message when the database refuses
something no check predicted (that one dead-lettered, the rest stored)."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import OperationalError

from fleet.ingest.decode import DeadLetter, DeadReason, Decoded, Received, dead_letter
from fleet.storage import repository

log = logging.getLogger(__name__)

STORE_RETRY_MAX_S = 10.0


class BatchStore:
    def __init__(self, engine: Engine, dead_letter_cap: int, stop: threading.Event) -> None:
        self.engine = engine
        self.dead_letter_cap = dead_letter_cap
        self.stop = stop
        """Set when the ingester stops: an outage is then no longer waited out."""

    def store(
        self, batch: list[Received], items: list[Decoded | DeadLetter]
    ) -> tuple[int, int, list[DeadLetter]]:
        """Store the batch in one transaction; a database outage is retried with backoff (unacked
        meanwhile); any other failure falls back to one transaction per message."""
        delay = 0.2
        retry = False
        while True:
            if retry:  # what an interrupted attempt recorded is not recorded twice
                items = [
                    replace(item, redelivered=True) if isinstance(item, DeadLetter) else item
                    for item in items
                ]
            try:
                try:
                    with self.engine.begin() as conn:
                        items = _refuse_revoked(conn, batch, items)
                        return repository.store_batch(conn, items, self.dead_letter_cap)
                except OperationalError:
                    raise
                except Exception as exc:
                    log.warning(
                        "storing a batch of %d failed (%s); storing its messages one by one",
                        len(batch),
                        exc.__class__.__name__,
                    )
                    return self._store_one_by_one(batch, items, retry)
            except OperationalError as exc:
                # The database is unavailable or locked: retry the whole batch, unacked meanwhile.
                if self.stop.is_set():
                    raise
                log.warning("database unavailable (%s); retrying the batch in %.1fs", exc.orig, delay)
                time.sleep(delay)
                delay = min(delay * 2, STORE_RETRY_MAX_S)
                retry = True

    def _store_one_by_one(
        self, batch: list[Received], items: list[Decoded | DeadLetter], retry: bool
    ) -> tuple[int, int, list[DeadLetter]]:
        """One transaction per message: the one the database refuses is dead-lettered, the rest stored.

        An OperationalError (the database went away) propagates: the whole batch is retried, and what
        was already stored is then recognised as duplicates.
        """
        stored = duplicates = 0
        letters: list[DeadLetter] = []
        for received, item in zip(batch, items, strict=True):
            try:
                with self.engine.begin() as conn:
                    got_stored, got_duplicates, got_letters = repository.store_batch(
                        conn, [item], self.dead_letter_cap
                    )
            except OperationalError:
                raise
            except Exception as exc:
                cause = getattr(exc, "orig", None) or exc  # the database's words, without the SQL
                letter = dead_letter(
                    received, DeadReason.STORE_FAILED, f"{exc.__class__.__name__}: {cause}"[:500]
                )
                got_stored = got_duplicates = 0
                got_letters = self._record_letter(replace(letter, redelivered=True) if retry else letter)
            stored += got_stored
            duplicates += got_duplicates
            letters += got_letters
        return stored, duplicates, letters

    def _record_letter(self, letter: DeadLetter) -> list[DeadLetter]:
        """Record a dead letter on its own; if even that is refused, log it (it is acknowledged anyway:
        a message the database can never take must not block the ones behind it)."""
        try:
            with self.engine.begin() as conn:
                return repository.store_batch(conn, [letter], self.dead_letter_cap)[2]
        except OperationalError:
            raise
        except Exception:
            log.exception("cannot record the dead letter of a message on %s; dropping it", letter.topic)
            return [letter]


def _refuse_revoked(
    conn: Connection, batch: list[Received], items: list[Decoded | DeadLetter]
) -> list[Decoded | DeadLetter]:
    """Dead-letter what revoked devices sent: the broker keeps accepting their login until its
    password file loses their line and reloads (by hand when the operator keeps that file)."""
    senders = {item.message.device_id for item in items if isinstance(item, Decoded)}
    revoked = repository.revoked_among(conn, senders)
    if not revoked:
        return items
    return [
        dead_letter(received, DeadReason.REVOKED, f"device {item.message.device_id} was revoked")
        if isinstance(item, Decoded) and item.message.device_id in revoked
        else item
        for received, item in zip(batch, items, strict=True)
    ]
