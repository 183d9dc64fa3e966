"""Engine construction, and creating the database when it does not exist yet."""

from __future__ import annotations

import asyncpg
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from services.db.errors import translated


def make_engine(url: str, *, pool_size: int = 10, max_overflow: int = 20) -> AsyncEngine:
    # No pre-ping: it costs a round trip per transaction, and a disconnect already makes
    # SQLAlchemy discard every older pooled connection, while the failed operation is
    # retried through the broker (DatabaseUnavailable requeues the message).
    return create_async_engine(
        url, pool_size=pool_size, max_overflow=max_overflow, pool_recycle=1800
    )


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
