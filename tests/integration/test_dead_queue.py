"""The dead queue for operators, on the real broker: parked messages are shown with where
they came from and why without being moved, and sent back to that queue once their cause
is fixed; what came from elsewhere stays parked."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from services.broker import dead
from services.broker.consumer import ORIGIN_QUEUE_HEADER, REASON_HEADER, Consumer
from services.broker.errors import Reject, TopologyMissing
from services.broker.publisher import Publisher
from services.broker.topology import Topology, queue_counts


@pytest.fixture
async def topology(connection: AbstractRobustConnection) -> AsyncIterator[Topology]:
    topology = Topology(f"dead-{uuid.uuid4().hex[:8]}")
    await topology.declare(await connection.channel())
    yield topology
    await topology.delete(await connection.channel())


@pytest.fixture
async def publisher(connection: AbstractRobustConnection) -> Publisher:
    return Publisher(await connection.channel(publisher_confirms=True, on_return_raises=True))


async def _intake(
    connection: AbstractRobustConnection,
    topology: Topology,
    publisher: Publisher,
    handler: Callable[[AbstractIncomingMessage], Awaitable[None]],
) -> Consumer:
    consumer = Consumer(
        "intake", await connection.channel(), topology.intake_queue, handler, publisher, topology, 8
    )
    await consumer.start()
    return consumer


async def _dead_count(connection: AbstractRobustConnection, topology: Topology) -> int:
    channel = await connection.channel()
    try:
        return (await queue_counts(channel, topology.dead_queue)).messages
    finally:
        await channel.close()


async def _until_dead(connection: AbstractRobustConnection, topology: Topology, n: int) -> None:
    deadline = time.monotonic() + 10
    while await _dead_count(connection, topology) != n:
        assert time.monotonic() < deadline, f"the dead queue never held {n}"
        await asyncio.sleep(0.05)


async def test_parked_messages_are_shown_in_place_then_sent_back_once_their_cause_is_fixed(
    connection: AbstractRobustConnection, topology: Topology, publisher: Publisher
) -> None:
    async def not_migrated(message: AbstractIncomingMessage) -> None:
        raise Reject("the database has no schema")

    consumer = await _intake(connection, topology, publisher, not_migrated)
    for key, task_id in (("task.created", "t-a"), ("task.cancel", "t-b")):
        await publisher.publish_raw(
            topology.tasks_exchange,
            key,
            json.dumps({"task_id": task_id}).encode(),
            message_id=f"m-{task_id}",
            headers={"x-sender": "svc-a"},
        )
    await _until_dead(connection, topology, 2)
    await consumer.stop(1)

    shown = await dead.peek(await connection.channel(), topology, 10)
    assert shown == [
        dead.DeadMessage(topology.intake_queue, key, "the database has no schema", task_id)
        for key, task_id in (("task.created", "t-a"), ("task.cancel", "t-b"))
    ]
    assert await _dead_count(connection, topology) == 2

    received: list[AbstractIncomingMessage] = []
    both_back = asyncio.Event()

    async def fixed(message: AbstractIncomingMessage) -> None:
        received.append(message)
        if len(received) == 2:
            both_back.set()

    consumer = await _intake(connection, topology, publisher, fixed)
    sent, kept = await dead.replay(await connection.channel(), publisher, topology, 10)
    await asyncio.wait_for(both_back.wait(), 10)
    await consumer.stop(1)
    assert (sent, kept) == (shown, [])
    assert sorted(
        (m.routing_key, json.loads(m.body)["task_id"], m.message_id, m.headers) for m in received
    ) == [
        ("task.cancel", "t-b", "m-t-b", {"x-sender": "svc-a"}),
        ("task.created", "t-a", "m-t-a", {"x-sender": "svc-a"}),
    ]
    assert await _dead_count(connection, topology) == 0


async def test_a_message_from_a_queue_that_takes_nothing_back_stays_parked(
    connection: AbstractRobustConnection, topology: Topology, publisher: Publisher
) -> None:
    await publisher.publish_raw(
        "",
        topology.dead_queue,
        b"{}",
        headers={REASON_HEADER: "unroutable", ORIGIN_QUEUE_HEADER: "somewhere.else"},
    )
    sent, kept = await dead.replay(await connection.channel(), publisher, topology, 10)
    assert sent == [] and [m.origin for m in kept] == ["somewhere.else"]
    assert await _dead_count(connection, topology) == 1


async def test_a_namespace_that_never_ran_is_named_as_such(
    connection: AbstractRobustConnection,
) -> None:
    with pytest.raises(TopologyMissing, match=r"queue never-\w+\.dead does not exist"):
        await dead.peek(await connection.channel(), Topology(f"never-{uuid.uuid4().hex[:8]}"), 5)


async def test_a_body_that_cannot_be_read_is_shown_and_names_a_task_only_when_it_can(
    connection: AbstractRobustConnection, topology: Topology, publisher: Publisher
) -> None:
    bodies = {
        b"[" * 5000 + b"]" * 5000: None,
        b'{"task_id": ["not", "an", "id"]}': None,
        b"\xff": None,
        b'{"task_id": "t\\ud800"}': None,
        b'{"task_id": "t-nan", "n": NaN}': "t-nan",
    }
    for body in bodies:
        await publisher.publish_raw("", topology.dead_queue, body, headers={REASON_HEADER: "bad"})
    shown = await dead.peek(await connection.channel(), topology, 10)
    assert [(m.reason, m.task_id) for m in shown] == [("bad", t) for t in bodies.values()]
