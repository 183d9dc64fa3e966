"""Starting the service: connections opened before the first message, a database that is
down at start reported rather than fatal, and one that cannot be right (missing, or
without this release's schema) refused at once, before a message is taken; a broker that
refuses the connection is named with the reason."""

from __future__ import annotations

import asyncio
import gc
import uuid
from collections.abc import AsyncIterator, Callable

import aio_pika
import pytest
from aio_pika import RobustConnection
from sqlalchemy.engine import make_url
from structlog.testing import capture_logs

from services.broker.connection import connect
from services.broker.errors import BrokerUnavailable
from services.broker.topology import Topology, queue_counts
from services.config import Settings, load_settings
from services.db.engine import Database, drop_database, ensure_database
from services.db.migrate import NotMigrated, revisions, upgrade
from services.runtime import Role, Wiring, run, wiring


@pytest.fixture
async def own_namespace(
    e2e_settings: Settings, database: str
) -> AsyncIterator[Callable[..., Settings]]:
    """Settings with a namespace of their own, whose queues are removed afterwards."""
    namespace = f"startup-{uuid.uuid4().hex[:8]}"

    def settings(**overrides: object) -> Settings:
        return load_settings(**(e2e_settings.model_dump() | {"namespace": namespace} | overrides))

    yield settings
    connection = await aio_pika.connect_robust(e2e_settings.amqp_url)
    async with connection:
        await Topology(namespace).delete(await connection.channel())


async def _started(settings: Settings, check: Callable[[Wiring], None]) -> None:
    """Run a worker until it is ready, ``check`` it then, and stop it."""
    stop = asyncio.Event()
    checked: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_ready(wired: Wiring) -> None:
        try:
            check(wired)
            checked.set_result(None)
        except BaseException as exc:
            checked.set_exception(exc)
        stop.set()

    service = asyncio.create_task(run(settings, [Role.WORKER], stop, on_ready))
    await asyncio.wait_for(service, 30)
    await checked


async def test_the_database_pool_is_open_before_the_first_message(
    own_namespace: Callable[..., Settings],
) -> None:
    settings = own_namespace(db_pool_size=3)
    seen: list[tuple[int, int]] = []

    def pool_state(wired: Wiring) -> None:
        seen.append(wired.repo.db.connections())

    await _started(settings, pool_state)
    assert seen == [(3, 3)], "three open and idle; the slots' keeper has a session of its own"


async def test_bursts_beyond_the_pool_reuse_its_server_sessions_instead_of_opening_new_ones(
    own_namespace: Callable[..., Settings],
) -> None:
    async with wiring(own_namespace(db_pool_size=3)) as wired:
        await wired.slots.connect()

        async def burst() -> set[int]:
            async def one() -> int:
                async with wired.repo.autocommit() as tx:
                    return int(
                        await tx.conn.fetchval("SELECT pg_backend_pid() FROM pg_sleep(0.02)")
                    )

            return set(await asyncio.gather(*(one() for _ in range(20))))

        first = await burst()
        assert len(first) <= 3, "the pool's sessions, no more"
        assert await burst() <= first, "the second burst ran on the sessions of the first"


async def test_a_service_started_while_the_database_is_down_starts_and_says_so(
    own_namespace: Callable[..., Settings],
) -> None:
    # Nothing listens on port 9 (discard) here: every connection attempt is refused.
    settings = own_namespace(database_url="postgresql+asyncpg://postgres@127.0.0.1:9/imagegen")
    with capture_logs() as logs:
        await _started(settings, lambda wired: None)
    warnings = [e for e in logs if e.get("action") == "db_unavailable"]
    assert warnings and warnings[0]["log_level"] == "warning"


async def test_a_service_pointed_at_a_missing_database_refuses_to_start_with_the_reason(
    own_namespace: Callable[..., Settings],
) -> None:
    settings = own_namespace(database_url="postgresql+asyncpg://postgres@127.0.0.1/no_such_db")
    with pytest.raises(
        NotMigrated, match=r'database "no_such_db" does not exist.*imagegen migrate'
    ):
        await _started(settings, lambda wired: None)


@pytest.mark.parametrize(
    ("where", "reason"),
    [
        # Nothing listens on port 9 (discard) here: every connection attempt is refused.
        ("guest:guest@127.0.0.1:9/", r"RabbitMQ at 127\.0\.0\.1:9 cannot be reached: .*111"),
        ("guest:wrong@127.0.0.1/", r"127\.0\.0\.1:5672 refused the login of user 'guest'"),
        ("guest:guest@127.0.0.1:5672/no-such-vhost", "virtual host 'no-such-vhost'"),
    ],
)
async def test_a_broker_that_refuses_the_connection_stops_the_start_with_the_reason(
    own_namespace: Callable[..., Settings], where: str, reason: str
) -> None:
    settings = own_namespace(amqp_url=f"amqp://{where}")
    with pytest.raises(BrokerUnavailable, match=reason):
        await _started(settings, lambda wired: None)


async def test_a_refused_connection_leaves_no_open_connection_behind() -> None:
    # An unclosed one closes itself when collected, and outside its running loop that
    # close is a coroutine never awaited: a warning in whatever runs next.
    def unclosed() -> set[int]:
        return {
            id(o) for o in gc.get_objects() if isinstance(o, RobustConnection) and not o.is_closed
        }

    before = unclosed()
    with pytest.raises(BrokerUnavailable):
        await connect("amqp://guest:wrong@127.0.0.1:5672/", "refused")
    assert unclosed() <= before


@pytest.fixture
async def scratch_database(e2e_settings: Settings) -> AsyncIterator[str]:
    """An empty database of its own, dropped afterwards."""
    url = (
        make_url(e2e_settings.database_url)
        .set(database=f"imagegen_scratch_{uuid.uuid4().hex[:8]}")
        .render_as_string(hide_password=False)
    )
    await ensure_database(url)
    yield url
    await drop_database(url)


async def test_a_service_on_a_database_never_migrated_refuses_to_start_and_takes_no_task(
    own_namespace: Callable[..., Settings], scratch_database: str
) -> None:
    settings = own_namespace(database_url=scratch_database)
    topology = Topology(settings.namespace, settings.retry_ttl_scale)
    connection = await aio_pika.connect_robust(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        await topology.declare(channel)
        tasks = await channel.get_exchange(topology.tasks_exchange)
        body = b'{"task_id": "t-unmigrated", "prompt": "a fox", "image_count": 1}'
        await tasks.publish(aio_pika.Message(body), routing_key="task.created")

        with pytest.raises(NotMigrated, match=r"at revision none.*run `imagegen migrate`"):
            await asyncio.wait_for(run(settings, [Role.INTAKE, Role.WORKER]), 30)

        assert (await queue_counts(channel, topology.intake_queue)).messages == 1
        assert (await queue_counts(channel, topology.dead_queue)).messages == 0


async def test_a_service_on_a_database_one_migration_behind_names_both_revisions(
    own_namespace: Callable[..., Settings], scratch_database: str
) -> None:
    newest, previous = revisions()[:2]
    await upgrade(scratch_database, previous)
    settings = own_namespace(database_url=scratch_database)
    with pytest.raises(
        NotMigrated, match=f"at revision {previous}, and this release needs {newest}"
    ):
        await _started(settings, lambda wired: None)


async def test_a_service_on_a_database_migrated_by_a_newer_release_starts_and_says_so(
    own_namespace: Callable[..., Settings], scratch_database: str
) -> None:
    await upgrade(scratch_database)
    db = Database(scratch_database)
    async with db.checkout() as conn:
        await conn.execute("UPDATE alembic_version SET version_num = 'next-release'")
    await db.close()
    with capture_logs() as logs:
        await _started(own_namespace(database_url=scratch_database), lambda wired: None)
    newer = [e for e in logs if e.get("action") == "schema_newer"]
    assert newer and newer[0]["revision"] == "next-release" and newer[0]["ours"] == revisions()[0]
