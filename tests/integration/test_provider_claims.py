"""What a keeper writes beside the slots, on real PostgreSQL: the claim marks the submit
of a live image it wins and reads its task and images, and the provider task id it records
counts the submit and clears the mark, sent together with other calls."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace

import pytest

from services.db.engine import Database
from services.db.errors import DatabaseUnavailable, RepositoryError
from services.db.repository import Repository
from services.db.rows import ImageRow, NewTask, TaskRow, planned
from statemachine import TaskStatus, Trigger
from tests.integration.conftest import keeper


async def _task(db: Database, image_count: int = 2) -> tuple[TaskRow, list[ImageRow]]:
    repo = Repository(db)
    new = NewTask(f"t-{uuid.uuid4().hex[:12]}", "u-1", "a cat", image_count=image_count)
    ids = await repo.image_ids(image_count)
    async with repo.autocommit() as tx:
        inserted = await tx.insert_task(new, lambda task, images: [], ids)
    assert inserted is not None
    return inserted


async def _marks(db: Database, task_id: str) -> list[tuple[bool, int]]:
    async with db.checkout() as conn:
        rows = await conn.fetch(
            "SELECT submit_started_at IS NOT NULL, unrecorded_submits FROM task_images"
            ' WHERE task_id = $1 ORDER BY "index"',
            task_id,
        )
    return [(r[0], r[1]) for r in rows]


async def test_winning_a_live_image_marks_its_submit_and_reads_the_rows_as_they_were(
    dbs: list[Database],
) -> None:
    task, images = await _task(dbs[0])
    slots = keeper(dbs[0], 2)
    first = images[0]
    async with slots.hold(first.id, (task.id, first.dispatch)) as claim:
        assert claim is not None
        assert claim.task is not None and claim.task.id == task.id
        assert [i.id for i in claim.images] == [i.id for i in images]
        assert claim.images[0].submit_started_at is None, "as it was before the mark"
        assert await _marks(dbs[1], task.id) == [(True, 0), (False, 0)]
    async with slots.hold(first.id, (task.id, first.dispatch)) as again:
        assert again is not None and again.images[0].submit_started_at is not None
    assert await _marks(dbs[1], task.id) == [(True, 1), (False, 0)], (
        "a mark found still there counts as an unrecorded submit"
    )
    await slots.close()


async def test_an_image_that_will_not_be_submitted_is_held_and_read_without_a_mark(
    dbs: list[Database],
) -> None:
    task, (stale, polled, stored) = await _task(dbs[0], image_count=3)
    slots = keeper(dbs[0], 3)
    await slots.record_provider_task(polled.id, "provider-task-1")
    async with Repository(dbs[0]).autocommit() as tx:
        current = await tx.transition(task, Trigger.START)
        assert current is not None
        after = planned(current, Trigger.STORE_IMAGE, stored_now=1)
        assert (await tx.write(current, after, [], store=replace(stored, url="https://img/2")))[0]
    for image, dispatch in (
        (stale, stale.dispatch + 1),
        (polled, polled.dispatch),
        (stored, stored.dispatch),
    ):
        async with slots.hold(image.id, (task.id, dispatch)) as claim:
            assert claim is not None and claim.task is not None
    assert await _marks(dbs[1], task.id) == [(False, 0)] * 3
    await slots.close()


async def test_an_image_of_an_ended_task_is_held_and_read_without_a_mark(
    dbs: list[Database],
) -> None:
    task, images = await _task(dbs[0])
    async with Repository(dbs[0]).autocommit() as tx:
        assert await tx.transition(task, Trigger.CANCEL) is not None
    slots = keeper(dbs[0], 2)
    async with slots.hold(images[0].id, (task.id, images[0].dispatch)) as claim:
        assert claim is not None and claim.task is not None
        assert claim.task.status is TaskStatus.CANCELLED
    assert await _marks(dbs[1], task.id) == [(False, 0)] * 2
    await slots.close()


async def test_a_try_that_finds_no_free_slot_marks_nothing(dbs: list[Database]) -> None:
    task, (first, second) = await _task(dbs[0])
    slots = keeper(dbs[0], 1)
    async with slots.hold(first.id, (task.id, first.dispatch)):
        waiting = slots.hold(second.id, (task.id, second.dispatch))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(waiting.__aenter__(), 0.2)
        assert await _marks(dbs[1], task.id) == [(True, 0), (False, 0)]
    async with slots.hold(second.id, (task.id, second.dispatch)) as claim:
        assert claim is not None and claim.images[1].submit_started_at is None
    assert await _marks(dbs[1], task.id) == [(True, 0), (True, 0)]
    await slots.close()


async def _provider_task(db: Database, image_id: int) -> tuple[str | None, int, bool]:
    async with db.checkout() as conn:
        row = await conn.fetchrow(
            "SELECT provider_task_id, submits, submit_started_at IS NOT NULL FROM task_images"
            " WHERE id = $1",
            image_id,
        )
    assert row is not None
    return row[0], row[1], row[2]


async def test_a_recorded_provider_task_counts_as_a_submit_and_clears_its_mark(
    dbs: list[Database],
) -> None:
    task, images = await _task(dbs[0], image_count=1)
    slots = keeper(dbs[0], 1)
    async with slots.hold(images[0].id, (task.id, images[0].dispatch)):
        assert await _provider_task(dbs[1], images[0].id) == (None, 0, True)
        await slots.record_provider_task(images[0].id, "provider-task-1")
        assert await _provider_task(dbs[1], images[0].id) == ("provider-task-1", 1, False)
    await slots.close()


async def test_provider_task_ids_queued_behind_another_call_go_out_together(
    dbs: list[Database],
) -> None:
    _, images = await _task(dbs[0], image_count=4)
    slots = keeper(dbs[0], 4)
    await slots.connect()
    assert slots._keeper is not None
    sent: list[str] = []
    slots._keeper.add_query_logger(lambda query: sent.append(query.query))
    await asyncio.gather(*(slots.record_provider_task(i.id, f"p-{i.index}") for i in images))
    assert len(sent) == 2, "the first alone, the three queued behind it in one statement"
    found = [await _provider_task(dbs[1], i.id) for i in images]
    assert found == [(f"p-{i}", 1, False) for i in range(4)]
    await slots.close()


async def test_a_provider_task_id_is_recorded_on_a_new_keeper_after_the_old_one_died(
    dbs: list[Database],
) -> None:
    _, images = await _task(dbs[0], image_count=1)
    slots = keeper(dbs[0], 1)
    await slots.connect()
    assert slots._keeper is not None
    slots._keeper.terminate()
    await slots.record_provider_task(images[0].id, "provider-task-1")
    assert await _provider_task(dbs[1], images[0].id) == ("provider-task-1", 1, False)
    assert not slots._records
    await slots.close()


async def test_a_provider_task_id_the_database_refuses_is_an_error_not_a_retry(
    dbs: list[Database],
) -> None:
    _, images = await _task(dbs[0], image_count=1)
    slots = keeper(dbs[0], 1)
    with pytest.raises(RepositoryError) as raised:
        await slots.record_provider_task(images[0].id, "x" * 200)
    assert not isinstance(raised.value, DatabaseUnavailable), "retrying cannot help"
    await slots.record_provider_task(images[0].id, "provider-task-1")
    assert await _provider_task(dbs[1], images[0].id) == ("provider-task-1", 1, False)
    await slots.close()
