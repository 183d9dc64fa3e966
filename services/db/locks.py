"""Global provider slots and per-image exclusivity, as PostgreSQL session advisory locks.

A lock lives as long as the session that took it, so a worker that crashes (or loses its
connection) gives its slots back by itself: no lease to expire, no token to recover.
"""

from __future__ import annotations

import asyncio
import random
import time
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services import metrics
from services.db.errors import translated

_TAKE_SLOT = text(
    "SELECT s FROM generate_series(0, :n - 1) AS s "
    "WHERE pg_try_advisory_lock(:c, (s + :offset) % :n) LIMIT 1"
)
_TRY = text("SELECT pg_try_advisory_lock(:c, :o)")
_RUNNING = text(
    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
    "AND classid::bigint = :c AND objsubid = 2 "
    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)


def lock_classes(namespace: str) -> tuple[int, int]:
    """The two advisory-lock key spaces (slots, images) of a namespace."""
    base = zlib.crc32(namespace.encode()) & 0x3FFFFFFF
    return base, base + 1


class ProviderSlots:
    """At most ``size`` provider calls in flight across every process sharing the database."""

    def __init__(self, engine: AsyncEngine, namespace: str, size: int) -> None:
        self.engine = engine
        self.size = size
        self.slot_class, self.image_class = lock_classes(namespace)

    @asynccontextmanager
    async def hold(self, image_id: int) -> AsyncIterator[bool]:
        """Hold a global slot and then image ``image_id`` for the length of the block.

        Yields False (holding nothing) when another worker already holds the image. While
        all slots are busy no connection is kept: each try borrows one from the pool.
        """
        async with translated():
            conn = await self._take_slot()
            try:
                got = (await conn.execute(_TRY, {"c": self.image_class, "o": image_id})).scalar()
                if not got:
                    yield False
                    return
                metrics.SLOTS_IN_USE.inc()
                try:
                    yield True
                finally:
                    metrics.SLOTS_IN_USE.dec()
            finally:
                await self._release_all(conn)
                await conn.close()

    async def _take_slot(self) -> AsyncConnection:
        """A connection holding one slot's lock (waiting, with backoff, while none is free)."""
        started = time.monotonic()
        pause = 0.005
        while True:
            conn = await self.engine.connect()
            try:
                conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
                params = {
                    "n": self.size,
                    "c": self.slot_class,
                    "offset": random.randrange(self.size),
                }
                slot = (await conn.execute(_TAKE_SLOT, params)).scalar()
            except BaseException:
                await conn.invalidate()
                raise
            if slot is not None:
                metrics.SLOT_WAIT_SECONDS.observe(time.monotonic() - started)
                return conn
            await conn.close()
            await asyncio.sleep(pause * (1 + random.random()))
            pause = min(pause * 2, 0.2)

    @staticmethod
    async def _release_all(conn: AsyncConnection) -> None:
        try:
            await conn.execute(text("SELECT pg_advisory_unlock_all()"))
        except BaseException:
            # A pooled connection must never keep a lock: close it, the server frees them.
            await conn.invalidate()
            raise

    async def running(self) -> int:
        """Slots held right now, by every process."""
        async with translated(), self.engine.connect() as conn:
            return int((await conn.execute(_RUNNING, {"c": self.slot_class})).scalar() or 0)
