"""Publishes a process's own outbox rows as soon as they commit, then deletes them.

Through the relay alone, an event waited for a notification, a statement taking it and a
round of confirms, and a task crosses two such hops: from its creation to its first image
message, and from its last image to ``task.status.images_ready``. The process that wrote
the rows already holds them, so it publishes them itself, confirmed and ``mandatory``, and
deletes the confirmed ones, many to a statement. Whatever it does not get to (a refused
publish, a broker or database outage, a crash) stays in the outbox, and the relay takes
rows older than ``HANDOFF_S``: a row may be published twice (the relay, and a writer that
was late), never lost.
"""

from __future__ import annotations

import asyncio
import contextlib

from aio_pika.abc import AbstractRobustConnection

from services import metrics
from services.broker.publisher import Publisher
from services.db.errors import RepositoryError
from services.db.repository import Repository
from services.db.rows import OutboxRow
from services.logs import get_logger

log = get_logger("imagegen.dispatch")
HANDOFF_S = 5.0
"""How long the relay leaves a row to the process that wrote it. Well beyond a publish
and a delete under load, so the two rarely both publish a row; a row whose writer failed
or died reaches the broker this much later."""
MAX_IN_FLIGHT = 10_000
"""Rows published and not yet confirmed; beyond it, new rows are left to the relay."""
DELETE_RETRY_S = 1.0


class Dispatcher:
    """Takes committed rows (``hand``, a Repository's ``on_commit``); ``publisher`` may be
    set later, and until then every row is left to the relay."""

    def __init__(self, repo: Repository, publisher: Publisher | None = None) -> None:
        self.repo = repo
        self.publisher = publisher
        self._pending: list[OutboxRow] = []
        self._in_flight = 0
        self._sent: list[int] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._deleting: asyncio.Task[None] | None = None
        self._closed = False

    async def connect(self, connection: AbstractRobustConnection) -> None:
        """Publish from now on, on a confirming channel of ``connection``."""
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        self.publisher = Publisher(channel)

    def hand(self, rows: list[OutboxRow]) -> None:
        """Rows just committed. Those of one turn of the event loop go out together."""
        if self.publisher is None or self._closed:
            return
        if self._in_flight + len(self._pending) + len(rows) > MAX_IN_FLIGHT:
            metrics.OUTBOX_LEFT.inc(len(rows))
            return
        if not self._pending:
            asyncio.get_running_loop().call_soon(self._flush)
        self._pending += rows

    def _flush(self) -> None:
        rows, self._pending = self._pending, []
        if rows and self.publisher is not None:
            task = asyncio.ensure_future(self._send(self.publisher, rows))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, publisher: Publisher, rows: list[OutboxRow]) -> None:
        self._in_flight += len(rows)
        try:
            results = await asyncio.gather(
                *(publisher.publish(row) for row in rows), return_exceptions=True
            )
        finally:
            self._in_flight -= len(rows)
        sent = [row.id for row, result in zip(rows, results, strict=True) if result is None]
        failed = [result for result in results if result is not None]
        metrics.OUTBOX_PUBLISHED.labels("writer").inc(len(sent))
        if failed:
            metrics.OUTBOX_FAILED.labels("writer").inc(len(failed))
            metrics.OUTBOX_LEFT.inc(len(failed))
            log.warning(
                "outbox rows not published; the relay will take them",
                action="dispatch",
                rows=len(failed),
                error=str(failed[0]) or failed[0].__class__.__name__,
            )
        if sent:
            self._sent += sent
            if self._deleting is None:
                self._deleting = asyncio.ensure_future(self._delete())

    async def _delete(self) -> None:
        """Delete what was confirmed, everything confirmed meanwhile in the next statement.
        A row not deleted is published again by the relay: a duplicate, so keep trying."""
        try:
            while self._sent:
                ids, self._sent = self._sent, []
                try:
                    async with self.repo.autocommit() as tx:
                        await tx.delete_outbox(ids)
                except RepositoryError as exc:
                    self._sent = ids + self._sent
                    log.warning(
                        "published outbox rows not deleted yet",
                        action="dispatch",
                        rows=len(ids),
                        error=str(exc),
                    )
                    if self._closed:
                        return
                    await asyncio.sleep(DELETE_RETRY_S)
        finally:
            self._deleting = None

    async def close(self, timeout_s: float = 5.0) -> None:
        """Take no more rows; let those in flight be confirmed and deleted for a while.
        What is left after that waits for the relay."""
        self._closed = True
        self._flush()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while self._tasks or self._deleting is not None:
                    await asyncio.gather(
                        *self._tasks, *([self._deleting] if self._deleting else [])
                    )
        for task in [*self._tasks, *([self._deleting] if self._deleting else [])]:
            task.cancel()
