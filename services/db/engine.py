"""Engine construction, and creating the database when it does not exist yet."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from services.db.errors import is_unavailable, translated

Driver = Any
"""An ``asyncpg.Connection`` (asyncpg ships no type hints)."""


def make_engine(url: str, *, pool_size: int = 10, max_overflow: int = 20) -> AsyncEngine:
    # No pre-ping: it costs a round trip per transaction, and a disconnect already makes
    # SQLAlchemy discard every older pooled connection, while the failed operation is
    # retried through the broker (DatabaseUnavailable requeues the message).
    # LIFO: the connections in use stay few and warm (a fresh server process has cold
    # catalog caches and no prepared statements), and the rest idle.
    return create_async_engine(
        url, pool_size=pool_size, max_overflow=max_overflow, pool_recycle=1800, pool_use_lifo=True
    )


async def driver_of(conn: AsyncConnection) -> Driver:
    """The asyncpg connection under a pooled SQLAlchemy one, reconnected if it died."""
    driver = (await conn.get_raw_connection()).driver_connection
    if driver is None or driver.is_closed():
        await conn.invalidate()
        driver = (await conn.get_raw_connection()).driver_connection
    return driver


@asynccontextmanager
async def checkout(engine: AsyncEngine) -> AsyncIterator[Driver]:
    """A pooled connection's asyncpg driver, for statements run without SQLAlchemy's
    execution layer (it cost more CPU per statement than the rest of an image's database
    work; see docs/ARCHITECTURE.md). The pool still owns the connection: one that failed
    or was interrupted mid-statement is invalidated rather than handed out again."""
    async with translated(), engine.connect() as conn:
        driver = await driver_of(conn)
        try:
            yield driver
        except BaseException as exc:
            if driver.is_closed() or isinstance(exc, asyncio.CancelledError) or is_unavailable(exc):
                await conn.invalidate()
            raise


async def open_pool(engine: AsyncEngine, size: int) -> None:
    """Open ``size`` pooled connections now. Otherwise the first messages each wait for a
    new connection and a server process with cold caches (asyncpg's own pool opens its
    minimum size at start the same way)."""
    async with AsyncExitStack() as stack:
        for _ in range(size):
            driver = await stack.enter_async_context(checkout(engine))
            await driver.fetchval("SELECT 1")


def _plain_dsn(url: str, database: str) -> str:
    return (
        make_url(url)
        .set(drivername="postgresql", database=database)
        .render_as_string(hide_password=False)
    )


async def ensure_database(url: str) -> bool:
    """Create the database named in ``url`` if it is missing; True when it was created."""
    name = make_url(url).database
    if not name:
        return False
    async with translated():
        conn = await asyncpg.connect(_plain_dsn(url, "postgres"))
        try:
            exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
            if exists:
                return False
            try:
                await conn.execute(f'CREATE DATABASE "{name}"')
            except asyncpg.DuplicateDatabaseError:
                return False
            return True
        finally:
            await conn.close()


async def drop_database(url: str) -> None:
    name = make_url(url).database
    async with translated():
        conn = await asyncpg.connect(_plain_dsn(url, "postgres"))
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()
