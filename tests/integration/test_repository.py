"""State changes are compare-and-set in PostgreSQL: racing writers, exactly one winner."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import replace

import pytest

from services.broker.topology import Topology
from services.db.repository import IMAGE_ID_BATCH, Repository, Tx
from services.db.rows import ImageRow, NewTask, Outgoing, TaskRow, planned
from services.events import Events
from statemachine import IllegalTransition, TaskStatus, Trigger

EVENTS = Events(Topology("test-repository"))


def _new(**kw: object) -> NewTask:
    base: dict[str, object] = {
        "id": f"t-{uuid.uuid4().hex[:12]}",
        "user_id": "u-1",
        "prompt": "a cat",
    }
    base.update(kw)
    return NewTask(**base)  # type: ignore[arg-type]


def _silent(task: TaskRow, images: list[ImageRow]) -> list[Outgoing]:
    return []


async def _create(repo: Repository, **kw: object) -> TaskRow:
    new = _new(**kw)
    ids = await repo.image_ids(new.image_count)
    async with repo.autocommit() as tx:
        inserted = await tx.insert_task(new, _silent, ids)
    assert inserted is not None
    return inserted[0]


async def test_a_new_task_is_pending_at_version_one_with_its_image_slots(repo: Repository) -> None:
    task = await _create(repo, image_count=3)
    found = await repo.get_task(task.id)
    assert found is not None
    row, images = found
    assert (row.status, row.version, row.images_ready) == (TaskStatus.PENDING, 1, 0)
    assert [i.index for i in images] == [0, 1, 2]
    assert all(not i.stored for i in images)


async def test_image_ids_are_drawn_ahead_in_batches_and_never_handed_out_twice(
    repo: Repository,
) -> None:
    fresh = Repository(repo.db)  # nothing drawn yet
    taken = await asyncio.gather(*(fresh.image_ids(4) for _ in range(40)))
    ids = [i for four in taken for i in four]
    assert len(set(ids)) == 160
    async with repo.autocommit() as tx:
        last = await tx.conn.fetchval(
            "SELECT last_value FROM pg_sequences WHERE sequencename = 'task_images_id_seq'"
        )
    # Three draws of 64 for forty tasks (a draw of its own each would have been forty).
    assert last - min(ids) + 1 == 3 * IMAGE_ID_BATCH


async def test_inserting_the_same_task_id_twice_keeps_the_first(repo: Repository) -> None:
    task = await _create(repo)
    ids = await repo.image_ids(task.image_count)
    async with repo.autocommit() as tx:
        assert await tx.insert_task(_new(id=task.id, prompt="other"), _silent, ids) is None
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
        await barrier.wait()
        async with repo.autocommit() as tx:
            while True:  # the loser re-reads and decides again
                current, images = await tx.get_task_with_images(task.id)
                assert current is not None
                after = planned(current, Trigger.STORE_IMAGE, stored_now=1)
                written, row = await tx.write(
                    current, after, store=replace(images[index], url=f"https://img/{index}")
                )
                if written:
                    assert row is not None
                    return row.status

    outcomes = await asyncio.gather(store(0), store(1))
    assert sorted(outcomes) == sorted([TaskStatus.GENERATING_IMAGES, TaskStatus.IMAGES_READY])
    found = await repo.get_task(task.id)
    assert found is not None
    assert (found[0].status, found[0].images_ready, found[0].version) == (
        TaskStatus.IMAGES_READY,
        2,
        started.version + 2,
    )
    assert [i.url for i in found[1]] == ["https://img/0", "https://img/1"]


async def test_the_loser_of_a_race_is_handed_the_row_the_winner_committed_meanwhile(
    repo: Repository,
) -> None:
    task = await _create(repo)
    async with repo.autocommit() as tx:
        seen = (await tx.get_task_with_images(task.id))[0]
    assert seen is not None
    async with repo.transaction() as winner:
        won = await winner.transition(seen, Trigger.START)
        assert won is not None

        async def lose() -> tuple[bool, TaskRow | None]:
            async with repo.autocommit() as tx:
                return await tx.write(seen, planned(seen, Trigger.CANCEL))

        loser = asyncio.create_task(lose())
        await asyncio.sleep(0.2)  # the loser's update now waits for the winner's commit
        assert not loser.done()
    written, current = await loser
    assert not written
    assert current == won, "the committed row, not the one the loser's snapshot shows"


async def test_an_illegal_trigger_raises_and_writes_nothing(repo: Repository) -> None:
    task = await _create(repo)
    with pytest.raises(IllegalTransition):
        async with repo.transaction() as tx:
            await tx.transition(task, Trigger.COMPLETE)
    found = await repo.get_task(task.id)
    assert found is not None and found[0].version == task.version


class _Undo(Exception):
    """Ends a ``_rolled_back`` transaction by rolling it back."""


@asynccontextmanager
async def _rolled_back(repo: Repository) -> AsyncIterator[Tx]:
    """A transaction rolled back at the end, so no relay ever sees its outbox rows."""
    with suppress(_Undo):
        async with repo.transaction() as tx:
            yield tx
            raise _Undo()


async def _outbox_ids(tx: Tx, task_id: str) -> list[str]:
    rows = await tx.conn.fetch(
        "SELECT message_id FROM outbox WHERE body->>'task_id' = $1 ORDER BY id", task_id
    )
    return [r["message_id"] for r in rows]


async def _started(tx: Tx, task: TaskRow) -> tuple[TaskRow, list[ImageRow]]:
    """Start ``task`` and read it back with its images."""
    assert await tx.transition(task, Trigger.START) is not None
    current, images = await tx.get_task_with_images(task.id)
    assert current is not None
    return current, images


async def test_a_write_lands_with_its_messages_and_stored_image_in_one_statement(
    repo: Repository,
) -> None:
    task = await _create(repo, image_count=2)
    async with _rolled_back(repo) as tx:
        current, images = await _started(tx, task)
        after = planned(current, Trigger.STORE_IMAGE, stored_now=1)
        message = EVENTS.image_ready(after, replace(images[1], url="https://img/1"))
        stored_image = replace(images[1], url="https://img/1", provider_seconds=0.25)
        written, row = await tx.write(current, after, [message], store=stored_image)
        assert written and row is not None
        assert (row.images_ready, row.version) == (1, current.version + 1)
        _, stored = await tx.get_task_with_images(task.id)
        assert [i.url for i in stored] == [None, "https://img/1"]
        assert [i.provider_seconds for i in stored] == [None, 0.25]
        assert await _outbox_ids(tx, task.id) == [message.message_id]


async def test_a_write_that_loses_the_race_writes_neither_row_nor_url_nor_messages(
    repo: Repository,
) -> None:
    task = await _create(repo, image_count=2)
    async with _rolled_back(repo) as tx:
        stale, images = await _started(tx, task)
        assert await tx.touch(stale) is not None  # someone else changes the task
        after = planned(stale, Trigger.STORE_IMAGE, stored_now=1)
        message = EVENTS.image_ready(after, replace(images[0], url="https://img/0"))
        written, current = await tx.write(
            stale, after, [message], store=replace(images[0], url="x")
        )
        assert not written
        _, unchanged = await tx.get_task_with_images(task.id)
        assert current is not None, "the loser is handed the task as it is now"
        assert (current.images_ready, current.version) == (0, stale.version + 1)
        assert all(i.url is None for i in unchanged)
        assert await _outbox_ids(tx, task.id) == []


def _announce(task: TaskRow, images: list[ImageRow]) -> list[Outgoing]:
    return [EVENTS.status(task, "task.status.pending", previous=None)] + [
        EVENTS.image_message(image) for image in images
    ]


async def test_a_new_task_is_written_with_the_image_rows_and_messages_it_was_announced_with(
    repo: Repository,
) -> None:
    async with _rolled_back(repo) as tx:
        announced: list[Outgoing] = []

        def announce(task: TaskRow, images: list[ImageRow]) -> list[Outgoing]:
            announced.extend(_announce(task, images))
            return announced

        new = _new(image_count=3, meta={"k": "v"})
        inserted = await tx.insert_task(new, announce, await repo.image_ids(new.image_count))
        assert inserted is not None
        task, images = inserted
        stored_task, stored_images = await tx.get_task_with_images(task.id)
        assert stored_task == task
        assert stored_images == images, "the planned image rows are the stored ones"
        assert [m.body["image_id"] for m in announced[1:]] == [i.id for i in stored_images]
        assert await _outbox_ids(tx, task.id) == [m.message_id for m in announced]


async def test_creating_a_taken_task_id_queues_no_messages(repo: Repository) -> None:
    task = await _create(repo)
    ids = await repo.image_ids(task.image_count)
    async with _rolled_back(repo) as tx:
        assert await tx.insert_task(_new(id=task.id, prompt="other"), _announce, ids) is None
        assert await _outbox_ids(tx, task.id) == []
        _, images = await tx.get_task_with_images(task.id)
        assert len(images) == task.image_count


async def test_counts_take_the_statuses_with_work_ahead_and_leave_finished_history_alone(
    repo: Repository,
) -> None:
    before = (await repo.counts()).by_status
    await _create(repo)
    started, cancelled = await _create(repo), await _create(repo)
    async with repo.autocommit() as tx:
        assert await tx.transition(started, Trigger.START) is not None
        assert await tx.transition(cancelled, Trigger.CANCEL) is not None
    after = (await repo.counts()).by_status
    assert set(after) == {"PENDING", "GENERATING_IMAGES", "GENERATING_MODEL"}
    assert {s: after[s] - before[s] for s in after} == {
        "PENDING": 1,
        "GENERATING_IMAGES": 1,
        "GENERATING_MODEL": 0,
    }
