"""The broker topology: the contract's names, the real TTLs by default, and retry tiers
that dead-letter back to the work queue."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import aio_pika
import pytest
from aio_pika.abc import AbstractRobustConnection
from aiormq.exceptions import ChannelPreconditionFailed

from services.broker.topology import IMAGE_ROUTING_KEY, Topology
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
    from services.broker.topology import queue_counts

    channel = await connection.channel()
    await topology.declare(channel)
    assert (await queue_counts(channel, topology.dead_queue)).messages == 0
    await channel.default_exchange.publish(aio_pika.Message(b"x"), routing_key=topology.dead_queue)
    for _ in range(50):
        if (await queue_counts(channel, topology.dead_queue)).messages == 1:
            break
        await asyncio.sleep(0.02)
    assert (await queue_counts(channel, topology.dead_queue)).messages == 1
