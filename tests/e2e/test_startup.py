"""Starting the service: connections opened before the first message, a database that is
down at start reported rather than fatal, and one that cannot be right refused at once."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable

import aio_pika
import pytest
from structlog.testing import capture_logs

from services.broker.topology import Topology
from services.config import Settings, load_settings
from services.db.errors import RepositoryError
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
    with pytest.raises(RepositoryError, match='database "no_such_db" does not exist'):
        await _started(settings, lambda wired: None)
