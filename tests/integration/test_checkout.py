"""A pooled connection for a block: driver errors leave it translated, and a connection
left mid-statement is closed rather than handed out again."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from services.db.engine import Database
from services.db.errors import DatabaseUnavailable, RepositoryError


@pytest.fixture
async def pool_of_one(database: str) -> AsyncIterator[Database]:
    db = Database(database, size=1, overflow=0)
    yield db
    await db.close()


async def test_a_database_nobody_listens_for_is_unavailable_at_checkout() -> None:
    db = Database("postgresql+asyncpg://postgres@127.0.0.1:1/imagegen")
    try:
        with pytest.raises(DatabaseUnavailable):
            async with db.checkout():
                pass
    finally:
        await db.close()


async def test_a_failed_statement_is_a_repository_error_and_its_connection_serves_again(
    pool_of_one: Database,
) -> None:
    with pytest.raises(RepositoryError) as raised:
        async with pool_of_one.checkout() as conn:
            first = await conn.fetchval("SELECT pg_backend_pid()")
            await conn.execute("SELECT no_such_column FROM tasks")
    assert not isinstance(raised.value, DatabaseUnavailable)
    async with pool_of_one.checkout() as conn:
        assert await conn.fetchval("SELECT pg_backend_pid()") == first, "the same session"


async def test_a_connection_cancelled_mid_statement_is_closed_not_handed_out_again(
    pool_of_one: Database,
) -> None:
    checked_out: list[int] = []
    in_statement = asyncio.Event()

    async def sleep() -> None:
        async with pool_of_one.checkout() as conn:
            checked_out.append(await conn.fetchval("SELECT pg_backend_pid()"))
            in_statement.set()
            await conn.execute("SELECT pg_sleep(10)")

    sleeping = asyncio.create_task(sleep())
    await in_statement.wait()
    await asyncio.sleep(0.05)  # the sleep is on the wire
    sleeping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sleeping
    async with pool_of_one.checkout() as conn:
        assert await conn.fetchval("SELECT pg_backend_pid()") != checked_out[0]


async def test_a_session_the_server_ends_mid_block_is_unavailable_not_an_internal_error(
    pool_of_one: Database, database: str
) -> None:
    killer = Database(database, size=1, overflow=0)
    try:
        with pytest.raises(DatabaseUnavailable):
            async with pool_of_one.checkout() as conn:
                pid = await conn.fetchval("SELECT pg_backend_pid()")
                async with killer.checkout() as other:
                    await other.execute("SELECT pg_terminate_backend($1)", pid)
                await asyncio.sleep(0.1)  # the driver hears the connection close
                await conn.fetchval("SELECT 1")
        async with pool_of_one.checkout() as conn:
            assert await conn.fetchval("SELECT pg_backend_pid()") != pid
    finally:
        await killer.close()


async def test_a_new_connection_binds_id_arrays_without_asking_the_server_for_their_types(
    pool_of_one: Database,
) -> None:
    # Otherwise the first message each connection serves waits for asyncpg's type
    # introspection query (10-20 ms on a fresh server process).
    queries: list[str] = []
    async with pool_of_one.checkout() as conn:
        conn.add_query_logger(lambda record: queries.append(record.query))
        await conn.fetchval("SELECT cardinality($1::int[]) + cardinality($2::bigint[])", [1], [2])
    assert queries == ["SELECT cardinality($1::int[]) + cardinality($2::bigint[])"]
