"""Global provider slots on real PostgreSQL: never more holders than slots across
processes (each process has its own keeper session), one holder per image, tries and
releases sent together, and nothing left locked afterwards."""

from __future__ import annotations

import asyncio
import random
import uuid

import pytest

from services.db.engine import Database
from services.db.locks import Claim, ProviderSlots
from tests.integration.conftest import keeper


async def test_two_keepers_never_hold_more_slots_than_the_limit(dbs: list[Database]) -> None:
    namespace = f"slots-{uuid.uuid4().hex[:8]}"
    processes = [ProviderSlots(db, namespace, size=3) for db in dbs]
    inside = peak = done = 0

    async def job(slots: ProviderSlots, image: int) -> None:
        nonlocal inside, peak, done
        async with slots.hold(image) as held:
            assert held
            inside += 1
            peak = max(peak, inside)
            assert await slots.running() <= 3
            await asyncio.sleep(random.random() * 0.02)
            inside -= 1
        done += 1

    await asyncio.wait_for(
        asyncio.gather(*(job(random.choice(processes), i) for i in range(60))), 30
    )
    assert (done, peak) == (60, 3)
    assert await processes[0].running() == 0, "every slot was given back"
    for slots in processes:
        await slots.close()


async def test_an_image_has_one_holder_in_a_process_and_across_processes(
    dbs: list[Database],
) -> None:
    namespace = f"slots-{uuid.uuid4().hex[:8]}"
    first, other = (ProviderSlots(db, namespace, size=4) for db in dbs)
    async with first.hold(7) as held:
        assert held
        async with first.hold(7) as again:
            assert not again, "the same process"
        async with other.hold(7) as elsewhere:
            assert not elsewhere, "another process"
        assert await first.running() == 1, "a refused image gives its slot back"
    async with other.hold(7) as later:
        assert later
    await first.close()
    await other.close()


async def test_a_slot_freed_early_serves_another_image_while_the_first_stays_held(
    dbs: list[Database],
) -> None:
    namespace = f"slots-{uuid.uuid4().hex[:8]}"
    first, other = (ProviderSlots(db, namespace, size=1) for db in dbs)
    async with first.hold(7) as held:
        assert held
        first.free_slot(7)
        first.free_slot(7)  # twice is harmless: the slot went back once
        async with other.hold(8) as next_image:
            assert next_image, "the only slot was free again"
            assert await _advisory_locks(dbs[1], first.slot_class) == 1
        async with other.hold(7) as same_image:
            assert not same_image, "the image itself is still held"
    assert await _locks_held(dbs[1], first) == (0, 0)
    await first.close()
    await other.close()


async def _until_locks(db: Database, slots: ProviderSlots, held: tuple[int, int]) -> bool:
    for _ in range(200):
        if await _locks_held(db, slots) == held:
            return True
        await asyncio.sleep(0.005)
    return False


async def _hold_and_store(db: Database, slots: ProviderSlots, image_id: int) -> None:
    """Hold an image as a worker does when it stores it: the slot goes back after the
    provider's answer, then the image is stored."""
    async with slots.hold(image_id) as held:
        assert held
        slots.free_slot(image_id)
        assert await _until_locks(db, slots, (0, 1)), "the slot went back"
        slots.finished(image_id)
    assert await _locks_held(db, slots) == (0, 1), "the image waits for company"


async def test_a_stored_images_lock_goes_back_with_the_next_keeper_call(
    dbs: list[Database],
) -> None:
    slots = keeper(dbs[0], 2)
    await _hold_and_store(dbs[1], slots, 500)
    assert slots._keeper is not None
    sent: list[list[int]] = []
    slots._keeper.add_query_logger(
        lambda query: sent.append(list(query.args[3])) if "unlock" in query.query else None
    )
    async with slots.hold(501) as held:
        assert held
    assert await _locks_held(dbs[1], slots) == (0, 0)
    assert sent == [[500, 501]], "one call gave both images back"
    await slots.close()


async def test_a_stored_images_lock_goes_back_alone_when_no_other_call_comes(
    dbs: list[Database],
) -> None:
    slots = keeper(dbs[0], 2)
    await _hold_and_store(dbs[1], slots, 510)
    assert await _until_locks(dbs[1], slots, (0, 0)), "but not for long"
    await slots.close()


async def test_an_image_not_stored_gives_its_lock_back_as_its_hold_ends(
    dbs: list[Database],
) -> None:
    slots = keeper(dbs[0], 2)
    async with slots.hold(520) as held:
        assert held
        slots.free_slot(520)  # as after a provider failure: the image goes to a retry
        assert await _until_locks(dbs[1], slots, (0, 1)), "the slot went back"
    assert await _locks_held(dbs[1], slots) == (0, 0), "the image went back as the hold ended"
    await slots.close()


async def test_a_closed_keeper_gives_its_slots_back(dbs: list[Database]) -> None:
    namespace = f"slots-{uuid.uuid4().hex[:8]}"
    crashed, survivor = (ProviderSlots(db, namespace, size=1) for db in dbs)
    entered = asyncio.Event()

    async def hold_forever() -> None:
        async with crashed.hold(1):
            entered.set()
            await asyncio.sleep(60)

    holder = asyncio.create_task(hold_forever())
    await entered.wait()
    assert await survivor.running() == 1
    assert crashed._keeper is not None
    crashed._keeper.terminate()  # the session dies, as with a killed process
    holder.cancel()
    async with survivor.hold(2) as held:
        assert held
    await survivor.close()


async def _advisory_locks(db: Database, lock_class: int) -> int:
    async with db.checkout() as conn:
        count = await conn.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid::bigint = $1",
            lock_class,
        )
    return int(count or 0)


async def _locks_held(db: Database, slots: ProviderSlots) -> tuple[int, int]:
    """Slot and image locks of ``slots``' namespace on the server, across processes."""
    return (
        await _advisory_locks(db, slots.slot_class),
        await _advisory_locks(db, slots.image_class),
    )


async def test_each_acquire_takes_exactly_one_slot_lock(dbs: list[Database]) -> None:
    slots = keeper(dbs[0], 3)
    holds = [slots.hold(100 + i) for i in range(3)]
    for hold in holds:
        assert await hold.__aenter__()
    locks = await _advisory_locks(dbs[1], slots.slot_class)
    assert locks == 3
    for hold in holds:
        await hold.__aexit__(None, None, None)
    assert await slots.running() == 0
    await slots.close()


async def test_a_holder_cancelled_before_its_slot_came_leaves_no_lock_behind(
    dbs: list[Database],
) -> None:
    slots = keeper(dbs[0], 2)
    await slots.connect()

    async def hold() -> None:
        async with slots.hold(9):
            await asyncio.sleep(60)

    holder = asyncio.create_task(hold())
    await asyncio.sleep(0)  # its acquire is on the wire, the answer not back yet
    holder.cancel()
    with pytest.raises(asyncio.CancelledError):
        await holder
    for _ in range(100):
        if await slots.running() == 0:
            break
        await asyncio.sleep(0.01)
    assert await slots.running() == 0, "the slot granted meanwhile was given back"
    images = await _advisory_locks(dbs[1], slots.image_class)
    assert images == 0
    async with slots.hold(9) as held:
        assert held
    await slots.close()


async def test_slots_freed_and_wanted_at_the_same_time_change_hands(
    dbs: list[Database],
) -> None:
    slots = keeper(dbs[0], 4)
    first = [slots.hold(i) for i in range(4)]
    for hold in first:
        assert await hold.__aenter__()
    later = [slots.hold(10 + i) for i in range(4)]
    waiting = [asyncio.create_task(hold.__aenter__()) for hold in later]
    await asyncio.sleep(0.05)
    assert not any(w.done() for w in waiting), "every slot is taken"
    await asyncio.gather(*(hold.__aexit__(None, None, None) for hold in first))
    assert all(await asyncio.wait_for(asyncio.gather(*waiting), 5))
    assert await slots.running() == 4
    for hold in later:
        await hold.__aexit__(None, None, None)
    await slots.close()


async def test_a_running_count_is_reused_only_while_younger_than_the_age_asked_for(
    dbs: list[Database],
) -> None:
    namespace = f"slots-{uuid.uuid4().hex[:8]}"
    counter, holder = (ProviderSlots(db, namespace, size=4) for db in dbs)
    assert await counter.running(max_age_s=60) == 0
    async with holder.hold(1) as held:
        assert held
        assert await counter.running(max_age_s=60) == 0, "the count taken a moment ago"
        assert await counter.running() == 1, "a fresh count"
        assert await counter.running(max_age_s=60) == 1
    await asyncio.sleep(0.05)
    assert await counter.running(max_age_s=0.01) == 0, "an older count is taken again"
    await counter.close()
    await holder.close()


async def test_releases_queued_behind_another_go_out_together_and_free_every_lock(
    dbs: list[Database],
) -> None:
    slots = keeper(dbs[0], 6)
    holds = [slots.hold(200 + i) for i in range(6)]
    for hold in holds:
        assert await hold.__aenter__()
    session = slots._keeper
    assert session is not None
    sent: list[str] = []
    session.add_query_logger(lambda query: sent.append(query.query))
    await asyncio.gather(*(hold.__aexit__(None, None, None) for hold in holds))
    # The first release goes alone; the five that queued behind it share one statement.
    assert len(sent) == 2, sent
    assert await _locks_held(dbs[1], slots) == (0, 0)
    await slots.close()


async def _on_the_wire(slots: ProviderSlots) -> None:
    """Until a keeper call is on the wire."""
    for _ in range(1000):
        if slots._io.locked():
            return
        await asyncio.sleep(0)
    raise AssertionError("no keeper call went out")


async def _tries_sent(slots: ProviderSlots) -> list[list[int]]:
    """Opens the keeper; then, for each claim it sends, the images tried."""
    await slots.connect()
    assert slots._keeper is not None
    sent: list[list[int]] = []
    slots._keeper.add_query_logger(lambda query: sent.append(list(query.args[5])))
    return sent


async def test_tries_made_in_one_turn_of_the_loop_go_out_in_one_call(
    dbs: list[Database],
) -> None:
    slots = keeper(dbs[0], 4)
    sent = await _tries_sent(slots)
    holds = [slots.hold(350 + i) for i in range(3)]
    entered = await asyncio.gather(*(hold.__aenter__() for hold in holds))
    # As a task's image messages do when delivered together: one round trip for all.
    assert sent == [[350, 351, 352]]
    assert all(isinstance(e, Claim) for e in entered)
    for hold in holds:
        await hold.__aexit__(None, None, None)
    assert await _locks_held(dbs[1], slots) == (0, 0)
    await slots.close()


async def test_tries_queued_behind_another_go_out_together_and_take_one_slot_each(
    dbs: list[Database],
) -> None:
    slots = keeper(dbs[0], 4)
    sent = await _tries_sent(slots)
    holds = [slots.hold(300 + i) for i in range(6)]
    first = asyncio.create_task(asyncio.wait_for(holds[0].__aenter__(), 0.3))
    await _on_the_wire(slots)
    entered = await asyncio.gather(
        first,
        *(asyncio.wait_for(hold.__aenter__(), 0.3) for hold in holds[1:]),
        return_exceptions=True,
    )
    # The first try goes alone; the five queued behind it share one statement, in which
    # three get the slots left and two find none (and wait, here until the timeout).
    assert sent[:2] == [[300], [301, 302, 303, 304, 305]]
    assert sum(isinstance(e, Claim) for e in entered) == 4
    assert sum(isinstance(e, TimeoutError) for e in entered) == 2
    assert await _locks_held(dbs[1], slots) == (4, 4)
    for hold, result in zip(holds, entered, strict=True):
        if isinstance(result, Claim):
            await hold.__aexit__(None, None, None)
    assert await _advisory_locks(dbs[1], slots.image_class) == 0
    await slots.close()


async def test_a_holder_cancelled_after_another_try_took_its_slot_gives_it_back(
    dbs: list[Database],
) -> None:
    slots = keeper(dbs[0], 4)
    await slots.connect()
    holds = [slots.hold(400 + i) for i in range(3)]
    tasks = [asyncio.create_task(holds[0].__aenter__())]
    await _on_the_wire(slots)
    tasks += [asyncio.create_task(hold.__aenter__()) for hold in holds[1:]]
    await asyncio.sleep(0)  # the other two queue behind the first
    assert set(slots._wanted) == {401, 402}
    # Until the second call takes both queued tries on the wire: after the first call's
    # round trip, however long a busy machine makes it, and before the second's answer.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while slots._wanted and loop.time() < deadline:  # noqa: ASYNC110 - a window one turn wide
        await asyncio.sleep(0)
    assert not slots._wanted
    tasks[2].cancel()
    with pytest.raises(asyncio.CancelledError):
        await tasks[2]
    assert all(isinstance(c, Claim) for c in await asyncio.gather(tasks[0], tasks[1]))
    for _ in range(100):
        if await _advisory_locks(dbs[1], slots.image_class) == 2:
            break
        await asyncio.sleep(0.01)
    assert await _locks_held(dbs[1], slots) == (2, 2), "image 402 was given back"
    for hold in holds[:2]:
        await hold.__aexit__(None, None, None)
    await slots.close()
