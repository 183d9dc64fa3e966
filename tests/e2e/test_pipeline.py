"""The pipeline end to end: happy path, the seed's worked example, failures, duplicates,
cancellation and correlation, on real PostgreSQL and RabbitMQ and the simulator."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from services.db.engine import Database
from services.db.locks import lock_classes
from services.db.repository import Repository
from services.provider.simulator import RunningSimulator
from services.runtime import Wiring
from tests.e2e.conftest import Bus, unique


async def test_a_task_goes_from_pending_to_images_ready_with_every_event_in_version_order(
    bus: Bus, service_repo: Repository, sim: RunningSimulator
) -> None:
    prompt = unique("a cute cat")
    task_id = await bus.create(prompt, metadata={"order": 7})
    ready = await bus.final(task_id)

    assert ready["event_type"] == "task.status.images_ready"
    assert bus.types(task_id) == [
        "task.status.pending",
        "task.status.generating_images",
        *["task.image.ready"] * 4,
        "task.status.images_ready",
    ]
    versions = sorted(e["version"] for e in bus.events[task_id])
    assert versions == list(range(1, 8)), "one version per event, no gaps"
    assert [i["index"] for i in ready["images"]] == [0, 1, 2, 3]
    assert ready["metadata"] == {"order": 7} and ready["previous_status"] == "GENERATING_IMAGES"

    found = await service_repo.get_task(task_id)
    assert found is not None
    task, images = found
    assert task.status.value == "IMAGES_READY" and task.image_generation_completed_at
    assert [i.index for i in images] == [0, 1, 2, 3] and all(i.url for i in images)
    stats = sim.sim.stats
    assert stats.submits_by_prompt[prompt] == 4 and stats.billed_by_prompt[prompt] == 4


async def test_each_stored_image_records_its_time_inside_provider_calls(
    bus: Bus, service_repo: Repository, sim: RunningSimulator
) -> None:
    sim.sim.configure({"latency_s": 0.3})
    started = asyncio.get_running_loop().time()
    task_id = await bus.create(unique("timed"), image_count=2)
    assert (await bus.final(task_id))["event_type"] == "task.status.images_ready"
    took = asyncio.get_running_loop().time() - started

    found = await service_repo.get_task(task_id)
    assert found is not None
    seconds = [i.provider_seconds for i in found[1]]
    assert all(s is not None and 0.3 <= s < took for s in seconds), seconds


def _task_seconds(status: str) -> tuple[float, float]:
    labels = {"status": status}
    count = REGISTRY.get_sample_value("imagegen_task_seconds_count", labels) or 0
    total = REGISTRY.get_sample_value("imagegen_task_seconds_sum", labels) or 0
    return count, total


async def test_each_finished_task_is_timed_from_its_creation_by_its_final_status(
    bus: Bus, sim: RunningSimulator
) -> None:
    sim.sim.configure({"latency_s": 0.3})
    ready, failed = _task_seconds("IMAGES_READY"), _task_seconds("FAILED")
    started = asyncio.get_running_loop().time()
    made = await bus.create(unique("timed to its end"), image_count=1)
    doomed = await bus.create(unique("doomed [sim:inspect]"), image_count=1)
    assert (await bus.final(made))["status"] == "IMAGES_READY"
    assert (await bus.final(doomed))["status"] == "FAILED"
    took = asyncio.get_running_loop().time() - started

    count, total = _task_seconds("IMAGES_READY")
    assert count == ready[0] + 1 and 0.3 <= total - ready[1] < took
    count, total = _task_seconds("FAILED")
    assert count == failed[0] + 1 and 0 < total - failed[1] < took


def _write_conflicts() -> float:
    return sum(
        REGISTRY.get_sample_value("imagegen_task_write_conflicts_total", {"write": write}) or 0
        for write in ("start", "store")
    )


async def test_the_images_of_a_task_in_one_process_write_the_task_by_turns_never_racing(
    bus: Bus,
) -> None:
    before = _write_conflicts()
    task_ids = [await bus.create(unique("turns")) for _ in range(6)]
    for task_id in task_ids:
        assert (await bus.final(task_id))["event_type"] == "task.status.images_ready"
        versions = sorted(e["version"] for e in bus.events[task_id])
        assert versions == list(range(1, 8)), "one version per event, no gaps"
    assert _write_conflicts() == before, "a write lost to another image of the same process"


async def test_the_seed_worked_example_retries_only_the_throttled_image(
    bus: Bus, sim: RunningSimulator
) -> None:
    # The 3rd and 5th submits of this prompt answer 429: one image is throttled twice.
    prompt = unique("worked example [sim:429@3,5]")
    task_id = await bus.create(prompt)
    ready = await bus.final(task_id)

    assert ready["status"] == "IMAGES_READY"
    retries = [e for e in bus.events[task_id] if e["event_type"] == "task.image.retrying"]
    assert len(retries) == 2
    assert len({r["retry"]["index"] for r in retries}) == 1, "the same image both times"
    assert [(r["retry"]["attempt"], r["retry"]["delay_s"]) for r in retries] == [(1, 30), (2, 60)]
    assert all(r["retry"]["reason"] == "rate_limited" for r in retries)
    assert sim.sim.stats.submits_by_prompt[prompt] == 6, "4 images + 2 throttled, none redone"
    assert sim.sim.stats.billed_by_prompt[prompt] == 4


async def test_a_throttled_image_waits_in_the_first_tier_as_long_as_the_retry_after_asks(
    bus: Bus, sim: RunningSimulator
) -> None:
    sim.sim.configure({"retry_after_s": 45})
    with capture_logs() as logs:
        task_id = await bus.create(unique("told to wait [sim:429@1]"), image_count=1)
        assert (await bus.final(task_id))["status"] == "IMAGES_READY"
    [retry] = [e["retry"] for e in bus.events[task_id] if e["event_type"] == "task.image.retrying"]
    assert (retry["attempt"], retry["delay_s"], retry["reason"]) == (1, 60, "rate_limited")
    [logged] = [e for e in logs if e.get("action") == "rate_limited"]
    assert (logged["delay_s"], logged["retry_after_s"]) == (60, 45.0)


@pytest.mark.parametrize(
    ("marker", "message"),
    [
        ("429", "provider error: 429 Throttling.RateQuota - Requests rate limit exceeded"),
        ("500", "provider error: 500 InternalError - An internal error has occured"),
    ],
)
async def test_four_failed_attempts_fail_the_task_with_the_seed_error_message(
    bus: Bus, sim: RunningSimulator, service_repo: Repository, marker: str, message: str
) -> None:
    prompt = unique(f"always failing [sim:{marker}]")
    task_id = await bus.create(prompt, image_count=1)
    failed = await bus.final(task_id)

    assert failed["event_type"] == "task.status.failed"
    assert failed["error"]["message"].startswith(message)
    assert sim.sim.stats.submits_by_prompt[prompt] == 4, "one attempt and three retries"
    retries = [
        e["retry"]["attempt"]
        for e in bus.events[task_id]
        if e["event_type"] == "task.image.retrying"
    ]
    assert retries == [1, 2, 3]
    found = await service_repo.get_task(task_id)
    assert found is not None
    assert found[0].failed_at is not None and found[0].error_message == failed["error"]["message"]


@pytest.mark.parametrize(
    ("marker", "code"),
    [
        ("inspect", "provider_content_rejected"),
        ("badkey", "provider_auth_failed"),
        ("arrearage", "provider_billing"),
        ("billoverdue", "provider_billing"),
        ("failinspect", "provider_content_rejected"),
    ],
)
async def test_a_non_retryable_error_fails_the_task_after_exactly_one_provider_call(
    bus: Bus, sim: RunningSimulator, marker: str, code: str
) -> None:
    prompt = unique(f"doomed [sim:{marker}]")
    task_id = await bus.create(prompt, image_count=1)
    failed = await bus.final(task_id)

    assert failed["status"] == "FAILED" and failed["error"]["code"] == code
    assert sim.sim.stats.submits_by_prompt[prompt] == 1
    assert "task.image.retrying" not in bus.types(task_id)


async def test_the_same_task_created_three_times_is_one_task_billed_once(
    bus: Bus, sim: RunningSimulator
) -> None:
    prompt = unique("delivered thrice")
    task_id = f"dup-{uuid.uuid4().hex[:10]}"
    for _ in range(3):
        await bus.create(prompt, task_id=task_id)
    await bus.final(task_id)
    await asyncio.sleep(0.5)  # let any duplicate show itself

    assert bus.types(task_id).count("task.status.pending") == 1
    assert bus.types(task_id).count("task.image.ready") == 4
    assert sim.sim.stats.billed_by_prompt[prompt] == 4
    assert sim.sim.stats.submits_by_prompt[prompt] == 4


async def test_a_cancel_during_generation_stores_nothing_and_is_the_last_event(
    bus: Bus, sim: RunningSimulator, service_repo: Repository
) -> None:
    sim.sim.configure({"latency_s": 1.0})
    prompt = unique("cancel me")
    task_id = await bus.create(prompt)
    await bus.wait_for(task_id, "task.status.generating_images")
    await bus.publish("task.cancel", {"task_id": task_id, "reason": "user pressed cancel"})
    cancelled = await bus.final(task_id)
    await asyncio.sleep(1.5)  # the provider finishes the running images meanwhile

    assert cancelled["event_type"] == "task.status.cancelled"
    assert bus.types(task_id)[-1] == "task.status.cancelled", "no event after cancelled"
    found = await service_repo.get_task(task_id)
    assert found is not None
    assert found[0].status.value == "CANCELLED" and not any(i.url for i in found[1])


async def test_cancelling_an_unknown_or_finished_task_is_refused_with_an_event(bus: Bus) -> None:
    unknown = f"nobody-{uuid.uuid4().hex[:8]}"
    await bus.publish("task.cancel", {"task_id": unknown})
    refused = await bus.wait_for(unknown, "task.cancel_rejected")
    assert refused["error"]["code"] == "not_found"

    done = await bus.create(unique("finished first"), image_count=1)
    await bus.final(done)
    await bus.publish("task.cancel", {"task_id": done})
    refused = await bus.wait_for(done, "task.cancel_rejected")
    assert refused["error"]["code"] == "not_cancellable" and refused["status"] == "IMAGES_READY"


async def test_events_carry_the_correlation_id_of_the_request(bus: Bus) -> None:
    task_id = f"corr-{uuid.uuid4().hex[:8]}"
    body = {"task_id": task_id, "user_id": "u", "prompt": unique("correlated"), "image_count": 1}
    await bus.publish("task.created", json.dumps(body).encode(), correlation_id="req-123")
    await bus.final(task_id)
    events = bus.events[task_id]
    assert len(events) >= 4
    assert all(e["_correlation_id"] == "req-123" for e in events)
    assert all(e["_message_id"] == e["event_id"] for e in events)


async def test_a_cancel_also_cancels_provider_tasks_still_pending_at_dashscope(
    bus: Bus, sim: RunningSimulator
) -> None:
    # One provider task runs at a time, so the other images wait as PENDING at the provider.
    sim.sim.configure({"latency_s": 1.0, "running_limit": 1})
    task_id = await bus.create(unique("cancel pending at provider"), image_count=3)
    await bus.wait_for(task_id, "task.status.generating_images")
    for _ in range(100):
        if sim.sim.stats.tasks_created >= 3:
            break
        await asyncio.sleep(0.02)
    await bus.publish("task.cancel", {"task_id": task_id})
    await bus.final(task_id)
    for _ in range(100):
        if sim.sim.stats.cancels >= 2:
            break
        await asyncio.sleep(0.05)
    assert sim.sim.stats.cancels == 2, "both waiting provider tasks were cancelled there"
    sim.sim.advance()
    assert sim.sim.stats.billed_images <= 1


async def test_a_provider_slot_goes_back_once_the_image_is_generated_before_it_is_stored(
    bus: Bus, service: Wiring, sim: RunningSimulator, db: Database
) -> None:
    sim.sim.configure({"latency_s": 1.0})
    slot_class, image_class = lock_classes(service.settings.namespace)
    task_id = await bus.create(unique("slot back before the store"), image_count=1)
    await bus.wait_for(task_id, "task.status.generating_images")
    async with db.checkout() as conn, conn.transaction():
        # The store must write the task row: locking it holds the store back.
        await conn.execute("SELECT FROM tasks WHERE id = $1 FOR UPDATE", task_id)
        image_id = await conn.fetchval("SELECT id FROM task_images WHERE task_id = $1", task_id)
        locks = (
            "SELECT count(*) FILTER (WHERE classid::bigint = $1),"
            " count(*) FILTER (WHERE classid::bigint = $2 AND objid::bigint = $3)"
            " FROM pg_locks WHERE locktype = 'advisory' AND granted"
        )
        for _ in range(250):  # the provider takes 1 s; the release follows it
            slots, image = await conn.fetchrow(locks, slot_class, image_class, image_id)
            if (slots, image) == (0, 1):
                break
            await asyncio.sleep(0.02)
        assert (slots, image) == (0, 1), "the slot is free while the image, still held, waits"
        assert bus.types(task_id)[-1] == "task.status.generating_images", "not stored yet"
    assert (await bus.final(task_id))["event_type"] == "task.status.images_ready"


async def test_the_poll_goes_out_while_the_provider_task_id_is_still_being_written(
    bus: Bus, sim: RunningSimulator, db: Database
) -> None:
    # The submit's answer comes late, so the image row can be locked once the claim has
    # marked the submit and before the answer's id is written.
    sim.sim.configure({"latency_s": 0.0, "answer_delay_s": 0.5})
    prompt = unique("poll beside the id's write")
    task_id = await bus.create(prompt, image_count=1)
    for _ in range(250):
        if sim.sim.stats.submits_by_prompt.get(prompt) == 1:
            break
        await asyncio.sleep(0.02)
    async with db.checkout() as conn, conn.transaction():
        # Writing the provider task id writes the image row: locking it holds the write.
        await conn.execute("SELECT FROM task_images WHERE task_id = $1 FOR UPDATE", task_id)
        for _ in range(250):
            if sim.sim.stats.queries:
                break
            await asyncio.sleep(0.02)
        assert sim.sim.stats.queries >= 1, "the provider was asked before the id was written"
        recorded = "SELECT provider_task_id FROM task_images WHERE task_id = $1"
        assert await conn.fetchval(recorded, task_id) is None
        assert bus.types(task_id)[-1] == "task.status.generating_images", "not stored yet"
    assert (await bus.final(task_id))["event_type"] == "task.status.images_ready"
    assert sim.sim.stats.submits_by_prompt[prompt] == sim.sim.stats.billed_by_prompt[prompt] == 1


async def test_a_task_start_holds_back_no_submit_and_the_events_keep_their_order(
    bus: Bus, service: Wiring, sim: RunningSimulator, db: Database
) -> None:
    slot_class, _ = lock_classes(service.settings.namespace)
    prompt = unique("start beside the submits")
    slots = await db.connect()  # a session of its own: closing it gives the slots back
    try:
        # Every provider slot taken, so no image is claimed before the task row is locked.
        await slots.execute(
            "SELECT pg_advisory_lock($1, s) FROM generate_series(0, $2 - 1) s",
            slot_class,
            service.settings.max_concurrent,
        )
        task_id = await bus.create(prompt)
        await bus.wait_for(task_id, "task.status.pending")
        async with db.checkout() as conn, conn.transaction():
            # The start must write the task row: locking it holds the start back.
            await conn.execute("SELECT FROM tasks WHERE id = $1 FOR UPDATE", task_id)
            await slots.execute("SELECT pg_advisory_unlock_all()")
            for _ in range(250):
                if sim.sim.stats.submits_by_prompt.get(prompt) == 4:
                    break
                await asyncio.sleep(0.02)
            assert sim.sim.stats.submits_by_prompt.get(prompt) == 4, "every submit went out"
            status = await conn.fetchval("SELECT status FROM tasks WHERE id = $1", task_id)
            assert status == "PENDING" and bus.types(task_id) == ["task.status.pending"]
    finally:
        await slots.close()
    assert (await bus.final(task_id))["event_type"] == "task.status.images_ready"
    assert bus.types(task_id) == [
        "task.status.pending",
        "task.status.generating_images",
        *["task.image.ready"] * 4,
        "task.status.images_ready",
    ]
