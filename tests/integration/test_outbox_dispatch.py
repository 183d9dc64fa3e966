"""A process publishes the outbox rows it commits, at once, and deletes them; what it
cannot publish stays in the outbox for the relay, and nothing uncommitted is handed out."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from aio_pika.abc import AbstractQueue, AbstractRobustConnection
from sqlalchemy.engine import make_url

from services import metrics
from services.broker.publisher import Publisher
from services.config import Settings
from services.db.engine import Database, drop_database, ensure_database
from services.db.migrate import upgrade
from services.db.repository import Repository
from services.db.rows import NewTask, OutboxRow, Outgoing, planned
from services.outbox.dispatch import Dispatcher
from services.outbox.relay import Relay
from statemachine import Trigger


@pytest.fixture(scope="module")
async def db(settings: Settings) -> AsyncIterator[Database]:
    """A database of its own: no relay but the tests' may drain this outbox."""
    url = make_url(settings.database_url)
    own = url.set(database=f"{url.database}_dispatch").render_as_string(hide_password=False)
    await ensure_database(own)
    await upgrade(own)
    db = Database(own)
    yield db
    await db.close()
    await drop_database(own)


@pytest.fixture
async def target(connection: AbstractRobustConnection) -> AsyncIterator[AbstractQueue]:
    channel = await connection.channel()
    yield await channel.declare_queue(f"dispatch-test-{uuid.uuid4().hex[:8]}", exclusive=True)


async def _publisher(connection: AbstractRobustConnection) -> Publisher:
    return Publisher(await connection.channel(publisher_confirms=True, on_return_raises=True))


class Handed:
    """A repository's ``on_commit`` that keeps what it was handed, then dispatches it."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher
        self.rows: list[OutboxRow] = []

    def __call__(self, rows: list[OutboxRow]) -> None:
        self.rows += rows
        self.dispatcher.hand(rows)


def _messages(queue: str, n: int) -> list[Outgoing]:
    return [Outgoing("", queue, {"n": i}, str(uuid.uuid4())) for i in range(n)]


async def _received(queue: AbstractQueue, expected: int, seconds: float = 5) -> list[str]:
    got: list[str] = []
    deadline = time.monotonic() + seconds
    while len(got) < expected and time.monotonic() < deadline:
        message = await queue.get(fail=False)
        if message is None:
            await asyncio.sleep(0.01)
            continue
        got.append(str(message.message_id))
        await message.ack()
    return got


async def _rows(db: Database, routing_key: str) -> int:
    async with db.checkout() as conn:
        sql = "SELECT count(*) FROM outbox WHERE routing_key = $1"
        return int(await conn.fetchval(sql, routing_key))


async def test_rows_a_transaction_commits_are_published_at_once_and_deleted(
    db: Database, connection: AbstractRobustConnection, target: AbstractQueue
) -> None:
    dispatcher = Dispatcher(Repository(db), await _publisher(connection))
    repo = Repository(db, on_commit=dispatcher.hand)
    messages = _messages(target.name, 3)

    started = time.monotonic()
    async with repo.transaction() as tx:
        await tx.add_outbox(messages)
    got = await _received(target, 3)
    took = time.monotonic() - started
    await dispatcher.close()

    assert got == [m.message_id for m in messages], "all of them, in the order written"
    assert took < 2, "no poll in between"
    assert await _rows(db, target.name) == 0


async def test_rows_of_a_rolled_back_transaction_are_never_handed_out(
    db: Database, connection: AbstractRobustConnection, target: AbstractQueue
) -> None:
    handed = Handed(Dispatcher(Repository(db), await _publisher(connection)))
    repo = Repository(db, on_commit=handed)

    with pytest.raises(RuntimeError):
        async with repo.transaction() as tx:
            await tx.add_outbox(_messages(target.name, 2))
            raise RuntimeError("the change failed after its rows were written")
    await handed.dispatcher.close()

    assert handed.rows == []
    assert await _received(target, 1, seconds=0.3) == []
    assert await _rows(db, target.name) == 0


async def test_a_single_statement_hands_its_rows_as_it_commits_and_a_lost_write_none(
    db: Database, connection: AbstractRobustConnection, target: AbstractQueue
) -> None:
    handed = Handed(Dispatcher(Repository(db), await _publisher(connection)))
    repo = Repository(db, on_commit=handed)
    created = _messages(target.name, 2)
    new = NewTask(id=f"t-{uuid.uuid4().hex[:8]}", user_id="u", prompt="p", image_count=1)

    async with repo.autocommit() as tx:
        inserted = await tx.insert_task(new, lambda task, images: created, await repo.image_ids(1))
        assert inserted is not None
        task = inserted[0]
        assert [r.message_id for r in handed.rows] == [m.message_id for m in created]
        assert await _received(target, 2) == [m.message_id for m in created]

        started = planned(task, Trigger.START)
        stale = planned(started, Trigger.CANCEL)  # written against a version nobody has
        written, _ = await tx.write(started, stale, _messages(target.name, 1))
        assert not written
        assert len(handed.rows) == 2, "a write that lost its compare-and-set hands nothing"
    await handed.dispatcher.close()

    assert await _rows(db, target.name) == 0
    assert await _received(target, 1, seconds=0.3) == []


async def test_a_row_the_broker_refuses_is_left_for_the_relay_and_its_batch_still_goes(
    db: Database, connection: AbstractRobustConnection, target: AbstractQueue
) -> None:
    dispatcher = Dispatcher(Repository(db), await _publisher(connection))
    repo = Repository(db, on_commit=dispatcher.hand)
    missing = f"no-such-queue-{uuid.uuid4().hex[:8]}"
    routable = _messages(target.name, 2)
    left_before = metrics.OUTBOX_LEFT._value.get()

    async with repo.transaction() as tx:
        await tx.add_outbox([routable[0], *_messages(missing, 1), routable[1]])
    got = await _received(target, 2)
    await dispatcher.close()

    assert got == [m.message_id for m in routable]
    assert await _rows(db, target.name) == 0
    assert await _rows(db, missing) == 1, "still there, for the relay to try again"
    assert metrics.OUTBOX_LEFT._value.get() == left_before + 1
    async with db.checkout() as conn:
        await conn.execute("DELETE FROM outbox WHERE routing_key = $1", missing)


async def test_rows_committed_before_the_broker_is_connected_wait_for_the_relay(
    db: Database, connection: AbstractRobustConnection, target: AbstractQueue
) -> None:
    dispatcher = Dispatcher(Repository(db))  # no publisher yet
    repo = Repository(db, on_commit=dispatcher.hand)
    first, second = _messages(target.name, 1), _messages(target.name, 1)

    async with repo.transaction() as tx:
        await tx.add_outbox(first)
    await dispatcher.connect(connection)
    async with repo.transaction() as tx:
        await tx.add_outbox(second)

    assert await _received(target, 2, seconds=1) == [second[0].message_id]
    await dispatcher.close()
    assert await _rows(db, target.name) == 1
    relay = Relay(Repository(db), await _publisher(connection), handoff_s=0)
    assert await relay.drain_once() == 1
    assert await _received(target, 1) == [first[0].message_id]
    assert await _rows(db, target.name) == 0


class CountingRepository(Repository):
    """Counts the statements the dispatcher deletes with."""

    statements = 0

    def autocommit(self):  # type: ignore[no-untyped-def]
        self.statements += 1
        return super().autocommit()


async def test_rows_confirmed_while_a_delete_is_on_its_way_share_the_next_one(
    db: Database, connection: AbstractRobustConnection, target: AbstractQueue
) -> None:
    deleting = CountingRepository(db)
    dispatcher = Dispatcher(deleting, await _publisher(connection))
    repo = Repository(db, on_commit=dispatcher.hand)

    async def write() -> None:
        async with repo.transaction() as tx:
            await tx.add_outbox(_messages(target.name, 1))

    await asyncio.gather(*(write() for _ in range(40)))
    assert len(await _received(target, 40)) == 40
    await dispatcher.close()

    assert await _rows(db, target.name) == 0
    assert deleting.statements < 40 / 2, f"{deleting.statements} deletes for 40 rows"
