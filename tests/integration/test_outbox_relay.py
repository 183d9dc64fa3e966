"""The outbox relay: committed rows reach RabbitMQ with confirms and leave the table;
a NOTIFY wakes it at once; two relays share the table without publishing a row twice."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from aio_pika.abc import AbstractQueue, AbstractRobustConnection, DeliveryMode
from sqlalchemy.engine import make_url

from services.aio import wait_any
from services.broker.errors import PublishReturned
from services.broker.publisher import Publisher
from services.config import Settings
from services.db.engine import Database, drop_database, ensure_database
from services.db.migrate import upgrade
from services.db.repository import Repository
from services.db.rows import Outgoing
from services.outbox.relay import Relay, outbox_database
from tests.queues import take


@pytest.fixture(scope="module")
async def database(settings: Settings) -> AsyncIterator[str]:
    """A database of its own: no other relay (the e2e service's) may drain this outbox."""
    url = make_url(settings.database_url)
    own = url.set(database=f"{url.database}_relay").render_as_string(hide_password=False)
    await ensure_database(own)
    await upgrade(own)
    yield own
    await drop_database(own)


@pytest.fixture(scope="module")
async def repo(database: str) -> AsyncIterator[Repository]:
    db = Database(database)
    yield Repository(db)
    await db.close()


@pytest.fixture
async def target(connection: AbstractRobustConnection) -> AsyncIterator[AbstractQueue]:
    channel = await connection.channel()
    queue = await channel.declare_queue(f"relay-test-{uuid.uuid4().hex[:8]}", exclusive=True)
    yield queue


async def _publisher(connection: AbstractRobustConnection) -> Publisher:
    return Publisher(await connection.channel(publisher_confirms=True, on_return_raises=True))


async def _add(repo: Repository, queue: str, n: int) -> set[str]:
    ids = {str(uuid.uuid4()) for _ in range(n)}
    async with repo.transaction() as tx:
        await tx.add_outbox([Outgoing("", queue, {"n": i}, i) for i in ids])
    return ids


async def _received(queue: AbstractQueue, expected: int, seconds: float = 10) -> list[str]:
    messages = await take(queue, expected, seconds)
    for message in messages:
        assert json.loads(message.body)["n"] == message.message_id
    return [str(message.message_id) for message in messages]


async def _outbox_rows(repo: Repository, queue: str) -> int:
    async with repo.transaction() as tx:
        sql = "SELECT count(*) FROM outbox WHERE routing_key = $1"
        return int(await tx.conn.fetchval(sql, queue))


async def test_a_committed_row_is_published_with_confirms_and_removed(
    repo: Repository,
    connection: AbstractRobustConnection,
    target: AbstractQueue,
    database: str,
) -> None:
    ids = await _add(repo, target.name, 3)
    relay = Relay(repo, await _publisher(connection), database)
    while await relay.drain_once():
        pass
    assert sorted(await _received(target, 3)) == sorted(ids)
    assert await _outbox_rows(repo, target.name) == 0


async def test_an_unroutable_row_stays_in_the_outbox_and_raises(
    repo: Repository, connection: AbstractRobustConnection, database: str
) -> None:
    missing = f"no-such-queue-{uuid.uuid4().hex[:8]}"
    await _add(repo, missing, 1)
    relay = Relay(repo, await _publisher(connection), database)

    with pytest.raises(PublishReturned):
        await relay.drain_once()
    assert await _outbox_rows(repo, missing) == 1
    async with repo.transaction() as tx:  # clean up for the other relay tests
        await tx.conn.execute("DELETE FROM outbox WHERE routing_key = $1", missing)


async def test_rows_sent_beside_an_unroutable_one_are_removed_and_never_sent_again(
    repo: Repository,
    connection: AbstractRobustConnection,
    target: AbstractQueue,
    database: str,
) -> None:
    missing = f"no-such-queue-{uuid.uuid4().hex[:8]}"
    before = await _add(repo, target.name, 2)
    await _add(repo, missing, 1)
    after = await _add(repo, target.name, 2)
    relay = Relay(repo, await _publisher(connection), database)

    for _ in range(2):
        with pytest.raises(PublishReturned):
            await relay.drain_once()
    assert sorted(await _received(target, 5, seconds=1)) == sorted(before | after), (
        "each routable row exactly once, though its batch failed twice"
    )
    assert await _outbox_rows(repo, target.name) == 0
    assert await _outbox_rows(repo, missing) == 1
    async with repo.transaction() as tx:
        await tx.conn.execute("DELETE FROM outbox WHERE routing_key = $1", missing)


async def test_a_notify_wakes_the_relay_long_before_its_poll(
    repo: Repository,
    connection: AbstractRobustConnection,
    target: AbstractQueue,
    database: str,
) -> None:
    stop = asyncio.Event()
    relay = Relay(repo, await _publisher(connection), database, poll_interval_s=30)
    running = asyncio.create_task(relay.run(stop))
    await wait_any(stop, seconds=0.5)  # listening by now
    started = time.monotonic()
    ids = await _add(repo, target.name, 1)
    assert await _received(target, 1, seconds=5) == list(ids)
    assert time.monotonic() - started < 2, "woken by NOTIFY, not by the 30 s poll"
    stop.set()
    await running


async def test_a_listener_failing_in_a_way_it_does_not_expect_stops_the_relay(
    repo: Repository, connection: AbstractRobustConnection
) -> None:
    # Not an outage it waits out (those it logs, polling meanwhile): the relay, and with it
    # the process, stops, where it would have gone on polling once a second unnoticed.
    stop = asyncio.Event()
    unreadable = "postgresql+asyncpg://postgres@127.0.0.1:no-port/imagegen"
    relay = Relay(repo, await _publisher(connection), unreadable, poll_interval_s=0.05)
    started = time.monotonic()
    with pytest.raises(ValueError):
        await asyncio.wait_for(relay.run(stop), 5)
    assert time.monotonic() - started < 1, "stopped by the failure, not by the timeout"


async def test_two_relays_share_the_table_without_publishing_a_row_twice(
    repo: Repository,
    connection: AbstractRobustConnection,
    target: AbstractQueue,
    database: str,
) -> None:
    ids = await _add(repo, target.name, 1000)
    relays = [Relay(repo, await _publisher(connection), database, batch=50) for _ in range(2)]

    async def drain(relay: Relay) -> None:
        while await relay.drain_once():
            pass

    await asyncio.gather(*(drain(r) for r in relays))
    got = await _received(target, 1000)
    assert len(got) == 1000 and set(got) == ids, "each row exactly once"
    assert await _outbox_rows(repo, target.name) == 0


async def test_concurrent_publishes_arrive_persistent_with_every_property(
    connection: AbstractRobustConnection, target: AbstractQueue
) -> None:
    publisher = await _publisher(connection)
    await asyncio.gather(
        *(
            publisher.publish_raw(
                "",
                target.name,
                json.dumps({"n": str(i)}).encode(),
                message_id=str(i),
                headers={"x-imagegen-attempt": i},
                correlation_id=f"c{i}",
            )
            for i in range(20)
        )
    )
    seen = {}
    for _ in range(20):
        message = await target.get(timeout=5)
        await message.ack()
        seen[message.message_id] = message
    assert sorted(seen, key=int) == [str(i) for i in range(20)]
    for i, message in ((int(k), m) for k, m in seen.items()):
        assert message.delivery_mode == DeliveryMode.PERSISTENT
        assert message.content_type == "application/json"
        assert message.headers == {"x-imagegen-attempt": i}
        assert message.correlation_id == f"c{i}"


async def test_a_publish_on_a_channel_without_confirms_is_refused(
    connection: AbstractRobustConnection, target: AbstractQueue
) -> None:

    unconfirmed = Publisher(await connection.channel(publisher_confirms=False))
    with pytest.raises(PublishReturned, match="not confirmed"):
        await unconfirmed.publish_raw("", target.name, b"{}")


@pytest.fixture
async def fresh_database(settings: Settings) -> AsyncIterator[str]:
    """An outbox no statement has seen yet, as on a new deployment."""
    url = make_url(settings.database_url)
    own = url.set(database=f"{url.database}_relay_fresh").render_as_string(hide_password=False)
    await drop_database(own)
    await ensure_database(own)
    await upgrade(own)
    yield own
    await drop_database(own)


async def test_a_relay_that_first_saw_an_empty_outbox_never_reads_the_deleted_rows(
    fresh_database: str, connection: AbstractRobustConnection, target: AbstractQueue
) -> None:
    db = outbox_database(fresh_database)
    repo = Repository(db)
    relay = Relay(repo, await _publisher(connection), fresh_database)
    watcher = Database(fresh_database)

    async def seq_scans() -> int:
        for each in (db, watcher):  # each session's counts reach the shared statistics
            async with each.checkout() as conn:
                await conn.execute("SELECT pg_stat_force_next_flush()")
        async with watcher.checkout() as conn:
            sql = "SELECT seq_scan FROM pg_stat_user_tables WHERE relname = 'outbox'"
            return int(await conn.fetchval(sql))

    try:
        # PostgreSQL may keep one plan for good after five runs: let it make that plan
        # while the table holds a handful of rows.
        for _ in range(8):
            await _add(repo, target.name, 11)
            assert await relay.drain_once() == 11
        async with watcher.checkout() as conn:  # what the last vacuum has not cleaned yet
            await conn.execute(
                "INSERT INTO outbox (exchange, routing_key, body, message_id)"
                " SELECT '', 'gone', jsonb_build_object('event', repeat('x', 300)), g::text"
                " FROM generate_series(1, 20000) g"
            )
            await conn.execute("DELETE FROM outbox")
        ids = await _add(repo, target.name, 11)
        before = await seq_scans()
        assert await relay.drain_once() == 11
        assert await seq_scans() == before, "the rows are found by the index"
        assert len(set(await _received(target, 99)) & ids) == 11
    finally:
        await db.close()
        await watcher.close()
