"""Publishes outbox rows with publisher confirms, deleting them as it goes.

A batch is deleted (``FOR UPDATE SKIP LOCKED``) and returned in one statement, published,
and the deletion committed once every row is confirmed, so several relays share the table
without publishing a row twice on purpose; a crash between the confirm and the commit
republishes a row, which consumers dedupe by id. A batch with rows that failed rolls back,
and only the confirmed rows are deleted again: a row the broker refuses stays, alone.
New rows wake the relay through LISTEN/NOTIFY; a slow poll covers lost notifications.
"""

from __future__ import annotations

import asyncio
import contextlib

from services import metrics
from services.aio import wait_any
from services.broker.errors import BrokerError
from services.broker.publisher import Publisher
from services.db.engine import Database
from services.db.errors import RepositoryError
from services.db.notify import OUTBOX_CHANNEL, listening
from services.db.repository import Repository
from services.logs import get_logger

log = get_logger("imagegen.relay")
BATCH = 200
FAILURE_PAUSE_S = 1.0
GATHER_S = 0.003
"""After a wake-up, how long to let the rows committed just behind the first one arrive.
Woken at once, a batch carried 8 rows under load, and every batch costs three statements
and a round of confirms; after 3 ms it carries 14 (docs/ARCHITECTURE.md)."""


FRESH_PLANS = {"plan_cache_mode": "force_custom_plan"}
"""How the relay's session plans: afresh for each statement. A take planned once for good
while the outbox was nearly empty (on every new database, and on one never analyzed) found
the rows it deletes by reading the whole table, with every row deleted since the last
vacuum: 115 heap pages an image in the throughput benchmark, 15.6 with fresh plans, which
cost less to make (docs/ARCHITECTURE.md)."""


def outbox_database(url: str) -> Database:
    """The relay's own connection: it takes one batch at a time, planned afresh."""
    return Database(url, size=1, overflow=0, session=FRESH_PLANS)


class _Unsent(Exception):
    """Rolls a batch back: some of its rows were not confirmed."""


class Relay:
    def __init__(
        self,
        repo: Repository,
        publisher: Publisher,
        database_url: str,
        poll_interval_s: float = 1.0,
        batch: int = BATCH,
    ) -> None:
        self.repo = repo
        self.publisher = publisher
        self.database_url = database_url
        self.poll_interval_s = poll_interval_s
        self.batch = batch
        self._wake = asyncio.Event()

    async def drain_once(self) -> int:
        """Publish one batch; returns how many rows were taken."""
        try:
            async with self.repo.transaction() as tx:
                rows = await tx.take_outbox(self.batch)
                if not rows:
                    return 0
                results = await asyncio.gather(
                    *(self.publisher.publish(row) for row in rows), return_exceptions=True
                )
                sent = [r.id for r, result in zip(rows, results, strict=True) if result is None]
                failed = [r for r in results if isinstance(r, BaseException)]
                if failed:
                    raise _Unsent()
        except _Unsent:
            if sent:
                async with self.repo.autocommit() as tx:
                    await tx.delete_outbox(sent)
        metrics.OUTBOX_PUBLISHED.inc(len(sent))
        if failed:
            metrics.OUTBOX_FAILED.inc(len(failed))
            unexpected = [f for f in failed if not isinstance(f, BrokerError)]
            if unexpected:
                raise unexpected[0]
            raise failed[0]
        return len(rows)

    async def run(self, stop: asyncio.Event) -> None:
        listener = asyncio.create_task(self._listen(stop))
        try:
            while not stop.is_set():
                if listener.done():
                    # It ends only on stop or on an error it does not expect: the relay's
                    # too, rather than a relay left polling once a second unnoticed.
                    listener.result()
                self._wake.clear()
                try:
                    claimed = await self.drain_once()
                except (BrokerError, RepositoryError) as exc:
                    log.warning("outbox publish failed, will retry", action="relay", error=str(exc))
                    await wait_any(stop, seconds=FAILURE_PAUSE_S)
                    continue
                if claimed >= self.batch:
                    continue
                await wait_any(stop, self._wake, seconds=self.poll_interval_s)
                await wait_any(stop, seconds=GATHER_S)
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):  # its error: raised above
                await listener

    async def _listen(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                async with listening(self.database_url, OUTBOX_CHANNEL, self._wake.set) as lost:
                    self._wake.set()  # rows may have arrived while we were not listening
                    await wait_any(stop, lost, seconds=None)
            except RepositoryError as exc:
                log.warning("outbox LISTEN unavailable, polling", action="relay", error=str(exc))
            await wait_any(stop, seconds=FAILURE_PAUSE_S)
