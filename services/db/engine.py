"""The connection pool, and creating the database when it does not exist yet."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Mapping
from contextlib import AsyncExitStack
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

from services.db.errors import is_unavailable, raise_translated, translated

Driver = Any
"""An ``asyncpg.Connection`` (asyncpg ships no type hints)."""


async def _keep(conn: Driver) -> None:
    """What a pooled connection is reset with on release: nothing. asyncpg's default
    (``RESET ALL``, unlisten, unlock advisory locks) is a round trip per checkout, and
    pooled connections change none of it; an open transaction is still rolled back."""


async def _setup(conn: Driver) -> None:
    # JSON columns in and out as Python values, as the repository reads and writes them.
    for name in ("json", "jsonb"):
        await conn.set_type_codec(
            name, encoder=str, decoder=json.loads, schema="pg_catalog", format="text"
        )
    # asyncpg has no built-in codec for int and bigint arrays (the statements' id lists):
    # the first statement on a connection that binds one waits for a type introspection
    # query, 10-20 ms on a fresh server process. Paid here, when the connection opens,
    # instead of by the first message that connection serves.
    await conn.fetchval("SELECT $1::int[], $2::bigint[]", None, None)


class Database:
    """PostgreSQL as the service uses it: an asyncpg pool, opened on first use, plus
    dedicated sessions for what must outlive a checkout (the lock keeper).

    asyncpg's own pool rather than SQLAlchemy's: statements already run on the driver
    (SQLAlchemy's execution layer cost more CPU per statement than the rest of an image's
    database work), and SQLAlchemy's async pool added three greenlet hops to every
    checkout: 320 against 180 us of CPU for a checkout and one statement (see
    docs/ARCHITECTURE.md). The pool is LIFO, so the connections in use stay few and warm,
    and it keeps connections it opened until they idle for ``IDLE_S``: a burst does not
    fork cold server processes again."""

    IDLE_S = 300.0
    ACQUIRE_TIMEOUT_S = 30.0

    def __init__(
        self,
        url: str,
        *,
        size: int = 10,
        overflow: int = 20,
        session: Mapping[str, str] | None = None,
    ) -> None:
        """``session``: server settings for every connection it opens."""
        self.dsn = _plain_dsn(url, make_url(url).database or "postgres")
        self.size = size
        self.overflow = overflow
        self.session = dict(session or {})
        self._pool: asyncpg.Pool | None = None
        self._opening = asyncio.Lock()

    async def _opened(self) -> asyncpg.Pool:
        if self._pool is None:
            async with self._opening, translated():
                if self._pool is None:
                    self._pool = await asyncpg.create_pool(
                        self.dsn,
                        min_size=0,
                        max_size=self.size + self.overflow,
                        max_inactive_connection_lifetime=self.IDLE_S,
                        init=_setup,
                        reset=_keep,
                        server_settings=self.session,
                    )
        return self._pool

    def checkout(self) -> Checkout:
        """A pooled connection, for an ``async with`` block."""
        return Checkout(self)

    async def connect(self, session: Mapping[str, str] | None = None) -> Driver:
        """A session of its own, outside the pool, with ``session``'s server settings on top
        of the pool's; the caller closes it."""
        async with translated():
            settings = self.session | dict(session or {})
            conn = await asyncpg.connect(self.dsn, server_settings=settings)
            try:
                await _setup(conn)
            except BaseException:
                conn.terminate()
                raise
            return conn

    async def warm(self, count: int) -> None:
        """Open ``count`` pooled connections now. Otherwise the first messages each wait for
        a new connection and a server process with cold caches."""
        async with AsyncExitStack() as stack:
            for _ in range(count):
                conn = await stack.enter_async_context(self.checkout())
                await conn.fetchval("SELECT 1")

    def connections(self) -> tuple[int, int]:
        """How many pooled connections are open, and how many of those are idle."""
        if self._pool is None:
            return 0, 0
        return self._pool.get_size(), self._pool.get_idle_size()

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pool.close(), 10)
            pool.terminate()


class Checkout:
    """A pooled connection for the length of a block. One that failed or was interrupted
    mid-statement is closed rather than handed out again; driver errors leave the block
    translated. A class rather than a generator: it runs several times per image, and a
    generator-based context manager costs a generator, its registration with the event
    loop and contextlib's wrapping each time."""

    __slots__ = ("_conn", "_db", "_pool")

    def __init__(self, db: Database) -> None:
        self._db = db

    async def __aenter__(self) -> Driver:
        try:
            self._pool = await self._db._opened()
            self._conn = await self._pool.acquire(timeout=Database.ACQUIRE_TIMEOUT_S)
        except Exception as exc:
            raise_translated(exc)
        return self._conn

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> None:
        # Both best effort: a connection the server ended was handed back to the pool by the
        # driver already, and one that fails its release is closed by the pool. What the
        # block did is decided already.
        with contextlib.suppress(Exception):
            if exc is not None and (isinstance(exc, asyncio.CancelledError) or is_unavailable(exc)):
                self._conn.terminate()
            await self._pool.release(self._conn)
        if isinstance(exc, Exception):
            raise_translated(exc)


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
