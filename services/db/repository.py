"""Every SQL statement of the service. State changes are compare-and-set updates whose
target the state machine decides; losing a race is a result (``None``), not an error."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import delete, func, insert, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.db.errors import LostRace, translated
from services.db.models import outbox, task_images, tasks
from services.db.rows import ImageRow, NewTask, OutboxRow, Outgoing, TaskRow
from statemachine import ACTIVE_STATUSES, TaskModel, TaskStatus, Trigger, apply_trigger

T = TypeVar("T")


# The timestamp column each status sets when a task enters it.
_ENTERED_AT = {
    TaskStatus.GENERATING_IMAGES: "image_generation_started_at",
    TaskStatus.IMAGES_READY: "image_generation_completed_at",
    TaskStatus.FAILED: "failed_at",
    TaskStatus.CANCELLED: "cancelled_at",
}


def _compare_and_set(task: TaskRow) -> Any:
    """An UPDATE that only matches the task as it was read: same status, same version."""
    return update(tasks).where(
        tasks.c.id == task.id,
        tasks.c.status == task.status.value,
        tasks.c.version == task.version,
    )


class Tx:
    """One transaction; obtained from ``Repository.transaction()``."""

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def insert_task(self, new: NewTask) -> TaskRow | None:
        """Insert a PENDING task and its image slots; None when the id is taken."""
        stmt = (
            pg_insert(tasks)
            .values(
                id=new.id,
                user_id=new.user_id,
                prompt=new.prompt,
                status=TaskStatus.PENDING.value,
                version=1,
                image_count=new.image_count,
                metadata=new.meta,
                correlation_id=new.correlation_id,
            )
            .on_conflict_do_nothing(index_elements=["id"])
            .returning(tasks)
        )
        row = (await self.conn.execute(stmt)).mappings().first()
        if row is None:
            return None
        await self.conn.execute(
            insert(task_images),
            [{"task_id": new.id, "index": i} for i in range(new.image_count)],
        )
        return TaskRow.of(row)

    async def get_task(self, task_id: str) -> TaskRow | None:
        row = (await self.conn.execute(select(tasks).where(tasks.c.id == task_id))).mappings()
        first = row.first()
        return TaskRow.of(first) if first else None

    async def get_images(self, task_id: str) -> list[ImageRow]:
        stmt = select(task_images).where(task_images.c.task_id == task_id)
        rows = (await self.conn.execute(stmt.order_by(task_images.c.index))).mappings()
        return [ImageRow.of(r) for r in rows]

    async def get_task_and_image(
        self, task_id: str, index: int
    ) -> tuple[TaskRow | None, ImageRow | None]:
        """Both rows in one round trip."""
        image_columns = [c.label(f"image_{c.name}") for c in task_images.c]
        stmt = (
            select(tasks, *image_columns)
            .outerjoin(
                task_images,
                (task_images.c.task_id == tasks.c.id) & (task_images.c.index == index),
            )
            .where(tasks.c.id == task_id)
        )
        row = (await self.conn.execute(stmt)).mappings().first()
        if row is None:
            return None, None
        image = {c.name: row[f"image_{c.name}"] for c in task_images.c}
        return TaskRow.of(row), ImageRow.of(image) if image["id"] is not None else None

    async def get_image(self, task_id: str, index: int) -> ImageRow | None:
        stmt = select(task_images).where(
            task_images.c.task_id == task_id, task_images.c.index == index
        )
        row = (await self.conn.execute(stmt)).mappings().first()
        return ImageRow.of(row) if row else None

    async def transition(
        self, task: TaskRow, trigger: Trigger, *, stored_now: int = 0, **values: Any
    ) -> TaskRow | None:
        """Fire ``trigger`` on ``task`` and write the result if nobody changed it meanwhile.

        Returns the updated row, or None when another writer got there first (the caller
        re-reads and decides again). ``IllegalTransition`` propagates.
        """
        images_ready = task.images_ready + stored_now
        model = TaskModel(task.status, images_ready=images_ready, image_count=task.image_count)
        target = apply_trigger(model, trigger)
        if target is not task.status and target in _ENTERED_AT:
            values.setdefault(_ENTERED_AT[target], func.now())
        stmt = (
            _compare_and_set(task)
            .values(
                status=target.value,
                version=tasks.c.version + 1,
                images_ready=images_ready,
                updated_at=func.now(),
                **values,
            )
            .returning(tasks)
        )
        row = (await self.conn.execute(stmt)).mappings().first()
        return TaskRow.of(row) if row else None

    async def touch(self, task: TaskRow) -> TaskRow | None:
        """Raise the version (an event without a status change), if nobody changed the task."""
        stmt = (
            _compare_and_set(task)
            .values(version=tasks.c.version + 1, updated_at=func.now())
            .returning(tasks)
        )
        row = (await self.conn.execute(stmt)).mappings().first()
        return TaskRow.of(row) if row else None

    async def store_image(self, image: ImageRow, url: str) -> bool:
        stmt = (
            update(task_images)
            .where(task_images.c.id == image.id, task_images.c.url.is_(None))
            .values(url=url, stored_at=func.now(), updated_at=func.now(), last_error=None)
        )
        return (await self.conn.execute(stmt)).rowcount == 1

    async def set_provider_task(self, image: ImageRow, provider_task_id: str | None) -> None:
        """Remember (or forget) the provider task of an image; a submit also counts here."""
        values: dict[str, Any] = {"provider_task_id": provider_task_id, "updated_at": func.now()}
        if provider_task_id is not None:
            values["submits"] = task_images.c.submits + 1
        await self.conn.execute(
            update(task_images).where(task_images.c.id == image.id).values(**values)
        )

    async def redispatch(
        self,
        image: ImageRow,
        *,
        failed: bool,
        error: str | None = None,
        keep_provider_task: bool = False,
    ) -> ImageRow:
        """Make a new image message the live one; ``failed`` counts a failed attempt.

        The provider task is forgotten unless ``keep_provider_task``: it ended without an
        image, so the next attempt submits afresh (an unfinished one is kept and polled)."""
        values: dict[str, Any] = {"dispatch": task_images.c.dispatch + 1, "updated_at": func.now()}
        if not keep_provider_task:
            values["provider_task_id"] = None
        if failed:
            values["attempts"] = task_images.c.attempts + 1
            values["last_error"] = error
        stmt = (
            update(task_images)
            .where(task_images.c.id == image.id)
            .values(**values)
            .returning(task_images)
        )
        return ImageRow.of((await self.conn.execute(stmt)).mappings().one())

    async def add_outbox(self, messages: Sequence[Outgoing]) -> None:
        if not messages:
            return
        await self.conn.execute(
            insert(outbox),
            [
                {
                    "exchange": m.exchange,
                    "routing_key": m.routing_key,
                    "body": m.body,
                    "headers": m.headers or None,
                    "message_id": m.message_id,
                    "correlation_id": m.correlation_id,
                }
                for m in messages
            ],
        )

    async def claim_outbox(self, limit: int) -> list[OutboxRow]:
        """Lock up to ``limit`` unsent rows that no other relay holds, oldest first."""
        stmt = select(outbox).order_by(outbox.c.id).limit(limit).with_for_update(skip_locked=True)
        rows = (await self.conn.execute(stmt)).mappings()
        return [
            OutboxRow(
                id=r["id"],
                exchange=r["exchange"],
                routing_key=r["routing_key"],
                body=r["body"],
                message_id=r["message_id"],
                headers=r["headers"] or {},
                correlation_id=r["correlation_id"],
            )
            for r in rows
        ]

    async def delete_outbox(self, ids: Sequence[int]) -> None:
        await self.conn.execute(delete(outbox).where(outbox.c.id.in_(ids)))

    async def try_image_xact_lock(self, lock_class: int, image_id: int) -> bool:
        """Whether no worker holds this image right now (held until the transaction ends)."""
        stmt = text("SELECT pg_try_advisory_xact_lock(:c, :o)")
        return bool((await self.conn.execute(stmt, {"c": lock_class, "o": image_id})).scalar())


@dataclass(frozen=True)
class TaskCounts:
    by_status: dict[str, int]
    outbox_rows: int
    outbox_oldest_s: float


class Repository:
    """The database, as the rest of the service sees it."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        async with translated(), self.engine.begin() as conn:
            yield Tx(conn)

    @asynccontextmanager
    async def autocommit(self) -> AsyncIterator[Tx]:
        """For one statement that is atomic by itself: no BEGIN/COMMIT round trips."""
        async with translated(), self.engine.connect() as conn:
            yield Tx(await conn.execution_options(isolation_level="AUTOCOMMIT"))

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
        async with self.transaction() as tx:
            task = await tx.get_task(task_id)
            if task is None:
                return None
            return task, await tx.get_images(task_id)

    async def ping(self) -> None:
        async with self.transaction() as tx:
            await tx.conn.execute(text("SELECT 1"))

    async def counts(self) -> TaskCounts:
        async with self.transaction() as tx:
            status_rows = await tx.conn.execute(
                select(tasks.c.status, func.count()).group_by(tasks.c.status)
            )
            by_status = {s.value: 0 for s in TaskStatus}
            by_status.update({str(s): int(n) for s, n in status_rows.all()})
            lag = (
                await tx.conn.execute(
                    select(
                        func.count(),
                        func.coalesce(
                            func.extract("epoch", func.now() - func.min(outbox.c.created_at)), 0
                        ),
                    )
                )
            ).one()
        return TaskCounts(by_status, int(lag[0]), float(lag[1]))

    async def stale_images(self, older_than_s: float, limit: int = 500) -> list[ImageRow]:
        """Unstored images of active tasks that nothing has touched for ``older_than_s``."""
        stmt = (
            select(task_images)
            .join(tasks, tasks.c.id == task_images.c.task_id)
            .where(
                tasks.c.status.in_([s.value for s in ACTIVE_STATUSES]),
                task_images.c.url.is_(None),
                task_images.c.updated_at
                < func.now() - func.make_interval(0, 0, 0, 0, 0, 0, older_than_s),
            )
            .order_by(task_images.c.updated_at)
            .limit(limit)
        )
        async with self.transaction() as tx:
            rows = (await tx.conn.execute(stmt)).mappings()
            return [ImageRow.of(r) for r in rows]
