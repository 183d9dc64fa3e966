"""The broker topology: the contract's names, the real TTLs by default, retry tiers that
dead-letter back to the work queue, and status events that are always routable."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import aio_pika
import pytest
from aio_pika.abc import AbstractRobustConnection
from aiormq.exceptions import ChannelPreconditionFailed

from services.broker.errors import TopologyMissing
from services.broker.publisher import Publisher
from services.broker.topology import IMAGE_ROUTING_KEY, Topology, queue_counts
from services.db.rows import Outgoing
from statemachine import ErrorKind


@pytest.fixture
async def topology(connection: AbstractRobustConnection) -> AsyncIterator[Topology]:
    topology = Topology(f"topo-{uuid.uuid4().hex[:8]}")
    yield topology
    await topology.delete(await connection.channel())


def test_names_follow_the_contract_with_the_namespace_prefix() -> None:
    t = Topology("imagegen")
    assert (t.tasks_exchange, t.status_exchange) == ("imagegen.tasks", "imagegen.status")
    assert (t.images_queue, t.dead_queue) == ("imagegen.images", "imagegen.dead")
    assert [q.name for q in t.retry_queues] == [
        "imagegen.retry.429.30s",
        "imagegen.retry.429.60s",
        "imagegen.retry.429.120s",
        "imagegen.retry.transient.2s",
        "imagegen.retry.transient.4s",
        "imagegen.retry.transient.8s",
    ]
    assert Topology("blue").images_queue == "blue.images"


async def test_default_tiers_carry_the_real_ttls_and_dead_letter_to_the_work_exchange(
    connection: AbstractRobustConnection, topology: Topology
) -> None:
    await topology.declare(await connection.channel())
    expected = {
        f"{topology.namespace}.retry.429.30s": 30000,
        f"{topology.namespace}.retry.429.60s": 60000,
        f"{topology.namespace}.retry.429.120s": 120000,
        f"{topology.namespace}.retry.transient.2s": 2000,
        f"{topology.namespace}.retry.transient.4s": 4000,
        f"{topology.namespace}.retry.transient.8s": 8000,
    }
    for name, ttl in expected.items():
        arguments = {
            "x-message-ttl": ttl,
            "x-dead-letter-exchange": topology.work_exchange,
            "x-dead-letter-routing-key": IMAGE_ROUTING_KEY,
        }
        # RabbitMQ accepts a re-declaration only when every argument is identical.
        await (await connection.channel()).declare_queue(name, durable=True, arguments=arguments)
        with pytest.raises(ChannelPreconditionFailed):
            channel = await connection.channel()
            await channel.declare_queue(
                name, durable=True, arguments={**arguments, "x-message-ttl": ttl + 1}
            )


async def test_declaring_twice_is_harmless(
    connection: AbstractRobustConnection, topology: Topology
) -> None:
    await topology.declare(await connection.channel())
    await topology.declare(await connection.channel())


async def test_an_expired_retry_returns_to_the_images_queue(
    connection: AbstractRobustConnection,
) -> None:
    topology = Topology(f"topo-{uuid.uuid4().hex[:8]}", ttl_scale=0.01)  # 2 s -> 20 ms
    channel = await connection.channel()
    try:
        await topology.declare(channel)
        tier = topology.retry_queue(ErrorKind.TRANSIENT, 0)
        assert tier.ttl_ms == 20
        await channel.default_exchange.publish(aio_pika.Message(b'{"x": 1}'), routing_key=tier.name)
        images = await channel.get_queue(topology.images_queue)
        for _ in range(50):
            message = await images.get(fail=False)
            if message is not None:
                assert message.body == b'{"x": 1}'
                await message.ack()
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the retry never came back to the images queue")
    finally:
        await topology.delete(await connection.channel())


async def test_queue_counts_are_read_fresh_on_every_call(
    connection: AbstractRobustConnection, topology: Topology
) -> None:
    channel = await connection.channel()
    await topology.declare(channel)
    assert (await queue_counts(channel, topology.dead_queue)).messages == 0
    await channel.default_exchange.publish(aio_pika.Message(b"x"), routing_key=topology.dead_queue)
    for _ in range(50):
        if (await queue_counts(channel, topology.dead_queue)).messages == 1:
            break
        await asyncio.sleep(0.02)
    assert (await queue_counts(channel, topology.dead_queue)).messages == 1


def _status_event(topology: Topology, n: int) -> Outgoing:
    return Outgoing(topology.status_exchange, "task.image.ready", {"n": n}, f"event-{n}")


async def test_a_status_event_nobody_subscribes_to_is_confirmed_and_kept_nowhere(
    connection: AbstractRobustConnection, topology: Topology
) -> None:
    await topology.declare(await connection.channel())
    channel = await connection.channel(publisher_confirms=True, on_return_raises=True)

    await Publisher(channel).publish(_status_event(topology, 1))  # a return would raise

    assert (await queue_counts(channel, topology.live_status_queue)).messages == 0


async def test_a_consumer_of_the_live_status_queue_sees_each_event_as_it_is_published(
    connection: AbstractRobustConnection, topology: Topology
) -> None:
    await topology.declare(await connection.channel())
    watching = await connection.channel()
    seen: asyncio.Queue[bytes] = asyncio.Queue()

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        await seen.put(message.body)

    live = await watching.get_queue(topology.live_status_queue)
    await live.consume(on_message, no_ack=True)
    publisher = Publisher(await connection.channel(publisher_confirms=True))
    for n in range(3):
        await publisher.publish(_status_event(topology, n))

    bodies = [await asyncio.wait_for(seen.get(), 5) for _ in range(3)]
    assert bodies == [b'{"n":0}', b'{"n":1}', b'{"n":2}']


async def test_declaring_removes_the_status_tail_queue_that_the_live_queue_replaced(
    connection: AbstractRobustConnection, topology: Topology
) -> None:
    channel = await connection.channel()
    former = topology.former_status_queue
    await channel.declare_queue(
        former, durable=True, arguments={"x-max-length": 10_000, "x-overflow": "drop-head"}
    )
    assert (await queue_counts(channel, former)).messages == 0

    await topology.declare(channel)

    with pytest.raises(TopologyMissing):
        await queue_counts(await connection.channel(), former)
