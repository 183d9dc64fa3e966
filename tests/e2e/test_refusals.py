"""Bad input end to end: every message the service cannot take is parked in the dead queue
with its reason, its task is told where it can be named, and valid work beside it goes on."""

from __future__ import annotations

import asyncio
import json
import uuid

import aio_pika
import pytest

from services.broker.topology import IMAGE_ROUTING_KEY
from services.db.repository import Repository
from services.runtime import Wiring
from tests.e2e.conftest import Bus, unique


async def _dead_reasons(
    service: Wiring, message_ids: set[str], timeout: float = 10
) -> dict[str, str]:
    """Take our messages out of the dead queue. Others stay unacked on this channel while
    we look (so they are not handed to us again) and go back when it closes."""
    channel = await service.connection.channel()
    queue = await channel.get_queue(service.topology.dead_queue)
    found: dict[str, str] = {}
    deadline = asyncio.get_running_loop().time() + timeout
    while set(found) != message_ids and asyncio.get_running_loop().time() < deadline:
        message = await queue.get(fail=False)
        if message is None:
            await asyncio.sleep(0.1)
            continue
        if message.message_id in message_ids:
            found[message.message_id] = str((message.headers or {}).get("x-imagegen-reason"))
            await message.ack()
    await channel.close()
    return found


async def test_poison_messages_are_parked_with_reasons_and_valid_tasks_still_flow(
    bus: Bus, service: Wiring
) -> None:
    good = {"user_id": "u", "prompt": "fine"}
    poison: dict[str, tuple[str, bytes | dict[str, object]]] = {
        "not json": ("task.created", b"{not json"),
        "wrong types": ("task.created", {"task_id": 42, "user_id": "u", "prompt": "x"}),
        "blank prompt": ("task.created", {"task_id": "p-blank", **good, "prompt": "   "}),
        "100 KB prompt": ("task.created", {"task_id": "p-big", **good, "prompt": "x" * 100_000}),
        "unknown field": ("task.created", {"task_id": "p-extra", **good, "colour": "red"}),
        "not an object": ("task.created", b"[1, 2, 3]"),
        "nul in prompt": ("task.created", {"task_id": "p-nul", **good, "prompt": "a\u0000b"}),
        "bad image_count": ("task.created", {"task_id": "p-count", **good, "image_count": 9}),
        "unknown key": ("task.exploded", {"task_id": "p-key"}),
        "invalid utf-8": ("task.created", b'{"prompt": "\xff\xfe"}'),
    }
    ids: dict[str, str] = {}
    valid = []
    for name, (key, body) in poison.items():
        ids[await bus.publish(key, body)] = name
        valid.append(await bus.create(unique(f"valid between {name}"), image_count=1))

    reasons = await _dead_reasons(service, set(ids))
    assert set(reasons) == set(ids), f"missing: {[ids[m] for m in set(ids) - set(reasons)]}"
    for message_id, reason in reasons.items():
        assert reason and reason != "None", f"{ids[message_id]} has no reason"
    by_name = {ids[m]: r for m, r in reasons.items()}
    assert "prompt: must not be blank" in by_name["blank prompt"]
    assert "larger than" in by_name["100 KB prompt"]
    assert "colour" in by_name["unknown field"]
    assert "not valid JSON" in by_name["not json"]
    rejected = await bus.wait_for("p-blank", "task.rejected")
    assert rejected["error"]["code"] == "invalid_request"
    for task_id in valid:
        assert (await bus.final(task_id))["status"] == "IMAGES_READY"


async def test_json_that_python_reads_but_the_database_cannot_hold_is_refused_and_its_task_told(
    bus: Bus, service: Wiring
) -> None:
    poison = {
        "nan": b'{"task_id": "p-nan", "user_id": "u", "prompt": "x", "metadata": {"k": NaN}}',
        "surrogate": b'{"task_id": "p-surrogate", "user_id": "u", "prompt": "\\ud800"}',
        "two task ids": b'{"task_id": "p-one", "task_id": "p-two", "user_id": "u", "prompt": "x"}',
        "deep": b'{"task_id": "p-deep", "user_id": "u", "prompt": "x", "metadata": '
        + b"[" * 5000
        + b"]" * 5000
        + b"}",
    }
    ids = {await bus.publish("task.created", body): name for name, body in poison.items()}
    valid = await bus.create(unique("valid after the poison"), image_count=1)

    by_name = {ids[m]: r for m, r in (await _dead_reasons(service, set(ids))).items()}
    assert "NaN is not a JSON value" in by_name["nan"]
    assert "unpaired UTF-16 surrogate" in by_name["surrogate"]
    assert "has the key 'task_id' twice" in by_name["two task ids"]
    assert "nested too deeply" in by_name["deep"]
    assert not any("internal error" in reason for reason in by_name.values())
    for task_id in ("p-nan", "p-surrogate"):
        rejected = await bus.wait_for(task_id, "task.rejected")
        assert rejected["error"]["code"] == "invalid_request"
    assert (await bus.final(valid))["status"] == "IMAGES_READY"
    # Two task ids that disagree name neither; too deep to read at all names none.
    assert bus.types("p-one") == bus.types("p-two") == bus.types("p-deep") == []


async def test_image_messages_no_relay_wrote_are_parked_as_invalid_and_work_goes_on(
    bus: Bus, service: Wiring
) -> None:
    task_id = await bus.create(unique("real work"), image_count=1)
    await bus.final(task_id)
    good = {"task_id": task_id, "index": 0, "image_id": 1, "dispatch": 1, "attempt": 0}
    exchange = await bus.channel.get_exchange(service.topology.work_exchange)
    ids = []
    for change in ({"image_id": 2**70}, {"index": -1}, {"task_id": "x" * 100_000}):
        message = aio_pika.Message(json.dumps(good | change).encode(), message_id=uuid.uuid4().hex)
        await exchange.publish(message, routing_key=IMAGE_ROUTING_KEY)
        ids.append(message.message_id)
    after = await bus.create(unique("work after the poison"), image_count=1)

    reasons = await _dead_reasons(service, set(ids))
    assert [reasons[m] for m in ids] == [
        "invalid image message: image_id 1180591620717411303424 is not in 1..2147483647",
        "invalid image message: index -1 is not in 0..3",
        "invalid image message: task_id is not a task id",
    ]
    assert (await bus.final(after))["status"] == "IMAGES_READY"


async def test_a_conflicting_duplicate_is_parked_and_the_first_task_is_kept(
    bus: Bus, service: Wiring, service_repo: Repository
) -> None:
    task_id = await bus.create(unique("original"), image_count=1)
    await bus.final(task_id)
    message_id = await bus.publish(
        "task.created", {"task_id": task_id, "user_id": "u-e2e", "prompt": "something else"}
    )
    reasons = await _dead_reasons(service, {message_id})
    assert "different content" in reasons[message_id]
    assert (await bus.wait_for(task_id, "task.rejected"))["error"]["code"] == "invalid_request"
    found = await service_repo.get_task(task_id)
    assert found is not None and found[0].status.value == "IMAGES_READY"


@pytest.mark.parametrize("routing_key", ["task.created", "task.cancel"])
async def test_a_correlation_id_no_database_can_store_is_refused_back_to_its_sender(
    bus: Bus, service: Wiring, routing_key: str
) -> None:
    task_id = f"corr-{uuid.uuid4().hex[:8]}"
    body = {"task_id": task_id, "user_id": "u", "prompt": unique("nul"), "image_count": 1}
    if routing_key == "task.cancel":
        body = {"task_id": await bus.create(unique("to cancel"), image_count=1)}
        task_id = body["task_id"]
    message_id = await bus.publish(routing_key, body, correlation_id="req\x001")
    reasons = await _dead_reasons(service, {message_id})
    assert reasons[message_id] == "correlation_id must not contain NUL characters"
    rejected = await bus.wait_for(task_id, "task.rejected")
    assert rejected["_correlation_id"] == "req\x001"
    if routing_key == "task.cancel":
        assert (await bus.final(task_id))["status"] == "IMAGES_READY"  # the cancel changed nothing
