"""The service's broker connection writes a batch of publishes in a few sends, and keeps
doing so after it reconnects."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from aio_pika.abc import AbstractQueue, AbstractRobustConnection
from yarl import URL

from services.broker.connection import connect
from services.broker.frames import TurnWriter
from services.broker.publisher import Publisher
from services.config import Settings
from tests.proxy import Proxy
from tests.queues import take


@pytest.fixture
def sends(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """How many bytes each send of a service connection's socket carried."""
    seen: list[int] = []
    flush = TurnWriter.flush

    def counted(self: TurnWriter) -> None:
        if self._waiting:
            seen.append(sum(len(frame) for frame in self._waiting))
        flush(self)

    monkeypatch.setattr(TurnWriter, "flush", counted)
    yield seen


async def _batch(connection: AbstractRobustConnection, queue: AbstractQueue, n: int) -> None:
    channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
    publisher = Publisher(channel)
    await asyncio.gather(
        *(publisher.publish_raw("", queue.name, b"%d" % i, message_id=str(i)) for i in range(n))
    )


async def _bodies(queue: AbstractQueue, n: int) -> list[bytes]:
    return [message.body for message in await take(queue, n)]


async def _queue(settings: Settings) -> tuple[AbstractRobustConnection, AbstractQueue]:
    reader = await connect(settings.amqp_url, "test-reader")
    channel = await reader.channel()
    queue = await channel.declare_queue(f"frames-test-{uuid.uuid4().hex[:8]}", exclusive=True)
    return reader, queue


async def _until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)


async def test_a_confirmed_batch_reaches_the_broker_in_a_few_sends_and_in_order(
    settings: Settings, sends: list[int]
) -> None:
    reader, queue = await _queue(settings)
    connection = await connect(settings.amqp_url, "test-frames")
    try:
        sends.clear()
        await _batch(connection, queue, 100)
        assert await _bodies(queue, 100) == [b"%d" % i for i in range(100)]
        published = [n for n in sends if n > 300]  # the batch's runs, not the reader's acks
        assert 1 <= len(published) <= 20, sends
    finally:
        await connection.close()
        await reader.close()


async def test_a_reconnected_connection_still_writes_in_runs(
    settings: Settings, sends: list[int]
) -> None:
    amqp = URL(settings.amqp_url)
    proxy = Proxy(amqp.host or "127.0.0.1", amqp.port or 5672)
    await proxy.start()
    reader, queue = await _queue(settings)
    connection = await connect(str(amqp.with_port(proxy.port)), "test-frames")
    try:
        await proxy.stop()  # cuts the connection, as a broker restart would
        await _until(lambda: not connection.connected.is_set())
        await proxy.start()
        await _until(connection.connected.is_set)
        sends.clear()
        await _batch(connection, queue, 100)
        assert sorted(await _bodies(queue, 100)) == sorted(b"%d" % i for i in range(100))
        assert 1 <= len([n for n in sends if n > 300]) <= 20, sends
    finally:
        await connection.close()
        await reader.close()
        await proxy.stop()
