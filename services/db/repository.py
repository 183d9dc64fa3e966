"""Reads and writes of tasks, images and the outbox. State changes are compare-and-set
updates whose target the state machine decides; losing a race is a result (``None``), not
an error.

The SQL (``statements``) runs on the pooled asyncpg connection itself (``checkout``): the
schema lives in ``models`` for Alembic, while the per-image path pays only the driver's
cost per statement.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from services.db import statements as sql
from services.db.engine import Checkout, Database, Driver
from services.db.errors import LostRace
from services.db.rows import (
    ImageRow,
    NewTask,
    OutboxRow,
    Outgoing,
    TaskRow,
    new_rows,
    planned,
    split_joined,
)
from statemachine import Trigger

T = TypeVar("T")
IMAGE_ID_BATCH = 64


class Tx:
    """One transaction (or, from ``Repository.autocommit()``, single statements)."""

    def __init__(self, conn: Driver) -> None:
        self.conn = conn

    async def _task(self, sql: str, *args: Any) -> TaskRow | None:
        row = await self.conn.fetchrow(sql, *args)
        return TaskRow.of(row) if row else None

    async def next_image_ids(self, count: int) -> list[int]:
        return [r[0] for r in await self.conn.fetch(sql.NEXT_IMAGE_IDS, count)]

    async def insert_task(
        self,
        new: NewTask,
        announce: Callable[[TaskRow, list[ImageRow]], Sequence[Outgoing]],
        ids: Sequence[int],
    ) -> tuple[TaskRow, list[ImageRow]] | None:
        """Insert a PENDING task, its image slots and the messages ``announce`` makes of
        them, in one statement; None, with nothing written, when the id is taken.

        The image ids (``ids``, from ``Repository.image_ids``) come first, so the messages
        (which name them) can be built before the write, from the rows the insert leaves
        (see ``new_rows``)."""
        task, images = new_rows(new, ids)
        args: list[Any] = [
            task.id,
            task.user_id,
            task.prompt,
            task.status.value,
            task.version,
            task.image_count,
            sql.json_text(task.meta),
            task.correlation_id,
            ids,  # $9 of sql.INSERT_IMAGES
        ]
        ctes = [f"t AS ({sql.INSERT_TASK})", f"i AS ({sql.INSERT_IMAGES})"]
        ctes += sql.outbox_cte(announce(task, images), args)
        row = await self._task(f"WITH {', '.join(ctes)} SELECT * FROM t", *args)
        return None if row is None else (row, images)

    async def get_task(self, task_id: str) -> TaskRow | None:
        return await self._task(sql.GET_TASK, task_id)

    async def get_images(self, task_id: str) -> list[ImageRow]:
        return [ImageRow.of(r) for r in await self.conn.fetch(sql.GET_IMAGES, task_id)]

    async def get_task_and_image(
        self, task_id: str, index: int
    ) -> tuple[TaskRow | None, ImageRow | None]:
        """Both rows in one round trip."""
        task, images = split_joined(await self.conn.fetch(sql.GET_TASK_AND_IMAGE, task_id, index))
        return task, images[0] if images else None

    async def get_task_with_images(self, task_id: str) -> tuple[TaskRow | None, list[ImageRow]]:
        """The task and all its images, as of one moment, in one round trip."""
        return split_joined(await self.conn.fetch(sql.GET_TASK_WITH_IMAGES, task_id))

    async def get_image(self, task_id: str, index: int) -> ImageRow | None:
        row = await self.conn.fetchrow(sql.GET_IMAGE, task_id, index)
        return ImageRow.of(row) if row else None

    async def transition(
        self, task: TaskRow, trigger: Trigger, *, stored_now: int = 0, **values: Any
    ) -> TaskRow | None:
        """Fire ``trigger`` on ``task`` and write the result if nobody changed it meanwhile.

        Returns the updated row, or None when another writer got there first (the caller
        re-reads and decides again). ``IllegalTransition`` propagates.
        """
        written, row = await self.write(
            task, planned(task, trigger, stored_now=stored_now, **values)
        )
        return row if written else None

    async def write(
        self,
        before: TaskRow,
        after: TaskRow,
        outgoing: Sequence[Outgoing] = (),
        *,
        store: ImageRow | None = None,
    ) -> tuple[bool, TaskRow | None]:
        """Turn ``before`` into ``after`` if nobody changed the task meanwhile, in one
        statement with the messages that announce it and, with ``store`` (the image as
        stored: its URL and provider time set), the image.

        A single statement is atomic by itself, so this needs no transaction around it:
        the messages are built from ``after`` before the write, because a compare-and-set
        that succeeds leaves exactly that row (see ``planned``). Returns (True, the written
        row); or, when another writer got there first and nothing was written, (False, the
        task as that writer left it, None if it is gone), which saves the loser a read.
        """
        args: list[Any] = [before.id, before.status.value, before.version]

        def arg(value: Any) -> str:
            args.append(value)
            return f"${len(args)}"

        sets = [
            f"status = {arg(after.status.value)}",
            f"version = {arg(after.version)}",
            f"images_ready = {arg(after.images_ready)}",
            f"error_code = {arg(after.error_code)}",
            f"error_message = {arg(after.error_message)}",
            "updated_at = now()",
        ]
        if after.status is not before.status and after.status in sql.ENTERED_AT:
            sets.append(f"{sql.ENTERED_AT[after.status]} = now()")
        where = sql.CAS
        ctes = []
        if store is not None:
            image_id = arg(store.id)
            # The worker holds the image's lock, so this only guards against a bug.
            where += (
                f" AND EXISTS (SELECT 1 FROM task_images WHERE id = {image_id}"
                f" AND url IS NULL AND dispatch = {arg(store.dispatch)})"
            )
            ctes.append(
                f"stored AS (UPDATE task_images SET url = {arg(store.url)}, stored_at = now(),"
                f" provider_seconds = {arg(store.provider_seconds)}, updated_at = now(),"
                f" last_error = NULL WHERE id = {image_id} AND EXISTS (SELECT 1 FROM t))"
            )
        ctes += sql.outbox_cte(outgoing, args)
        update = f"UPDATE tasks SET {', '.join(sets)} {where} RETURNING *"
        ctes.append(sql.CURRENT)
        statement = f"WITH {', '.join([f't AS ({update})', *ctes])} {sql.WRITTEN_OR_CURRENT}"
        row = await self.conn.fetchrow(statement, *args)
        return (bool(row["written"]), TaskRow.of(row)) if row else (False, None)

    async def touch(self, task: TaskRow) -> TaskRow | None:
        """Raise the version (an event without a status change), if nobody changed the task."""
        return await self._task(sql.TOUCH, task.id, task.status.value, task.version)

    async def redispatch(
        self,
        image: ImageRow,
        *,
        failed: bool,
        error: str | None = None,
        keep_provider_task: bool = False,
        submit_in_doubt: bool = False,
    ) -> ImageRow:
        """Make a new image message the live one; ``failed`` counts a failed attempt.

        The provider task is forgotten unless ``keep_provider_task``: it ended without an
        image, so the next attempt submits afresh (an unfinished one is kept and polled)."""
        sets = ["dispatch = dispatch + 1", "updated_at = now()"]
        args: list[Any] = [image.id]
        if not keep_provider_task:
            sets.append("provider_task_id = NULL")
        if failed:
            args.append(error)
            sets += ["attempts = attempts + 1", "last_error = $2"]
            if not submit_in_doubt:  # the attempt's outcome is known, its submit with it
                sets.append("submit_started_at = NULL")
        sql = f"UPDATE task_images SET {', '.join(sets)} WHERE id = $1 RETURNING *"
        return ImageRow.of(await self.conn.fetchrow(sql, *args))

    async def add_outbox(self, messages: Sequence[Outgoing]) -> None:
        if not messages:
            return
        await self.conn.executemany(sql.INSERT_OUTBOX, [sql.outbox_values(m) for m in messages])

    async def take_outbox(self, limit: int) -> list[OutboxRow]:
        """Delete up to ``limit`` unsent rows that no other relay holds, and return them
        oldest first: gone for good only if the transaction commits."""
        rows = [
            OutboxRow(
                id=r["id"],
                exchange=r["exchange"],
                routing_key=r["routing_key"],
                body=r["body"],
                message_id=r["message_id"],
                headers=r["headers"] or {},
                correlation_id=r["correlation_id"],
            )
            for r in await self.conn.fetch(sql.TAKE_OUTBOX, limit)
        ]
        return sorted(rows, key=lambda row: row.id)

    async def delete_outbox(self, ids: Sequence[int]) -> None:
        await self.conn.execute(sql.DELETE_OUTBOX, list(ids))

    async def try_image_xact_lock(self, lock_class: int, image_id: int) -> bool:
        """Whether no worker holds this image right now (held until the transaction ends)."""
        return bool(await self.conn.fetchval(sql.TRY_XACT_LOCK, lock_class, image_id))


@dataclass(frozen=True)
class TaskCounts:
    by_status: dict[str, int]
    outbox_rows: int
    outbox_oldest_s: float


class _Autocommit(Checkout):
    """``Repository.autocommit()``: a checkout that hands out a ``Tx``."""

    __slots__ = ()

    async def __aenter__(self) -> Tx:
        return Tx(await super().__aenter__())


class Repository:
    """The database, as the rest of the service sees it."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._image_ids: deque[int] = deque()
        self._drawing = asyncio.Lock()

    async def image_ids(self, count: int) -> list[int]:
        """``count`` unused image ids, drawn from the sequence ``IMAGE_ID_BATCH`` at a time
        so that creating a task costs one round trip, not two. Ids this process never uses
        are gaps in the sequence, as those of an insert that found its task id taken."""
        if len(self._image_ids) < count:
            async with self._drawing:  # one draw at a time: the tasks behind it share it
                if len(self._image_ids) < count:
                    async with self.autocommit() as tx:
                        drawn = await tx.next_image_ids(max(count, IMAGE_ID_BATCH))
                    self._image_ids.extend(drawn)
        return [self._image_ids.popleft() for _ in range(count)]

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        async with self.db.checkout() as conn, conn.transaction():
            yield Tx(conn)

    def autocommit(self) -> _Autocommit:
        """For statements each atomic by itself: no BEGIN/COMMIT round trips."""
        return _Autocommit(self.db)

    async def atomic(self, work: Callable[[Tx], Awaitable[T]], tries: int = 50) -> T:
        """Run ``work`` in a transaction, again in a fresh one each time it raises
        ``LostRace`` (someone changed the task between our read and our write)."""
        for _ in range(tries - 1):
            try:
                async with self.transaction() as tx:
                    return await work(tx)
            except LostRace:
                continue
        async with self.transaction() as tx:
            return await work(tx)

    async def get_task(self, task_id: str) -> tuple[TaskRow, list[ImageRow]] | None:
        async with self.autocommit() as tx:
            task, images = await tx.get_task_with_images(task_id)
        return None if task is None else (task, images)

    async def ping(self) -> None:
        async with self.db.checkout() as conn:
            await conn.fetchval("SELECT 1")

    async def counts(self) -> TaskCounts:
        async with self.transaction() as tx:
            by_status = dict.fromkeys(sql.IN_FLIGHT_VALUES, 0)
            counted = await tx.conn.fetch(sql.COUNT_STATUSES, sql.IN_FLIGHT_VALUES)
            by_status.update({r[0]: int(r[1]) for r in counted})
            rows, oldest_s = await tx.conn.fetchrow(sql.OUTBOX_LAG)
        return TaskCounts(by_status, int(rows), float(oldest_s))

    async def stale_images(self, older_than_s: float, limit: int = 500) -> list[ImageRow]:
        """Unstored images of active tasks that nothing has touched for ``older_than_s``."""
        async with self.autocommit() as tx:
            rows = await tx.conn.fetch(sql.STALE_IMAGES, sql.ACTIVE_VALUES, older_than_s, limit)
        return [ImageRow.of(r) for r in rows]
