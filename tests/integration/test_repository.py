"""State changes are compare-and-set in PostgreSQL: racing writers, exactly one winner."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from services.db.errors import LostRace
from services.db.repository import Repository, Tx
from services.db.rows import NewTask, TaskRow
from statemachine import IllegalTransition, TaskStatus, Trigger


def _new(**kw: object) -> NewTask:
    base: dict[str, object] = {
        "id": f"t-{uuid.uuid4().hex[:12]}",
        "user_id": "u-1",
        "prompt": "a cat",
    }
    base.update(kw)
    return NewTask(**base)  # type: ignore[arg-type]


async def _create(repo: Repository, **kw: object) -> TaskRow:
    async with repo.transaction() as tx:
        row = await tx.insert_task(_new(**kw))
    assert row is not None
    return row


async def test_a_new_task_is_pending_at_version_one_with_its_image_slots(repo: Repository) -> None:
    task = await _create(repo, image_count=3)
    found = await repo.get_task(task.id)
    assert found is not None
    row, images = found
    assert (row.status, row.version, row.images_ready) == (TaskStatus.PENDING, 1, 0)
    assert [i.index for i in images] == [0, 1, 2]
    assert all(not i.stored for i in images)


async def test_inserting_the_same_task_id_twice_keeps_the_first(repo: Repository) -> None:
    task = await _create(repo)
    async with repo.transaction() as tx:
        assert await tx.insert_task(_new(id=task.id, prompt="other")) is None
    found = await repo.get_task(task.id)
    assert found is not None and found[0].prompt == "a cat"


async def test_two_racing_transitions_have_exactly_one_winner(repo: Repository) -> None:
    task = await _create(repo)
    barrier = asyncio.Barrier(2)

    async def start() -> TaskRow | None:
        async with repo.transaction() as tx:
            seen = await tx.get_task(task.id)
            assert seen is not None
            await barrier.wait()  # both have read PENDING before either writes
            return await tx.transition(seen, Trigger.START)

    results = await asyncio.gather(start(), start())
    winners = [r for r in results if r is not None]
    assert len(winners) == 1, "exactly one writer wins the race"
    assert results.count(None) == 1, "the loser is told it lost, without an exception"
    found = await repo.get_task(task.id)
    assert found is not None
    assert found[0].status is TaskStatus.GENERATING_IMAGES
    assert found[0].version == task.version + 1


async def test_the_last_two_images_finishing_together_make_one_images_ready(
    repo: Repository,
) -> None:
    task = await _create(repo, image_count=2)
    async with repo.transaction() as tx:
        started = await tx.transition(task, Trigger.START)
    assert started is not None
    barrier = asyncio.Barrier(2)

    async def store(index: int) -> TaskStatus:
        async def work(tx: Tx) -> TaskStatus:
            current = await tx.get_task(task.id)
            image = await tx.get_image(task.id, index)
            assert current is not None and image is not None
            await tx.store_image(image, f"https://img/{index}")
            row = await tx.transition(current, Trigger.STORE_IMAGE, stored_now=1)
            if row is None:
                raise LostRace()  # rolled back; the loser re-reads and decides again
            return row.status

        await barrier.wait()
        return await repo.atomic(work)

    outcomes = await asyncio.gather(store(0), store(1))
    assert sorted(outcomes) == sorted([TaskStatus.GENERATING_IMAGES, TaskStatus.IMAGES_READY])
    found = await repo.get_task(task.id)
    assert found is not None
    assert (found[0].status, found[0].images_ready, found[0].version) == (
        TaskStatus.IMAGES_READY,
        2,
        started.version + 2,
    )


async def test_an_illegal_trigger_raises_and_writes_nothing(repo: Repository) -> None:
    task = await _create(repo)
    with pytest.raises(IllegalTransition):
        async with repo.transaction() as tx:
            await tx.transition(task, Trigger.COMPLETE)
    found = await repo.get_task(task.id)
    assert found is not None and found[0].version == task.version
