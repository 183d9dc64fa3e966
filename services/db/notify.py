"""LISTEN/NOTIFY on a dedicated connection (the pool's connections come and go)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

from services.db.errors import translated

OUTBOX_CHANNEL = "imagegen_outbox"


@asynccontextmanager
async def listening(
    database_url: str, channel: str, on_notify: Callable[[], None]
) -> AsyncIterator[asyncio.Event]:
    """Call ``on_notify`` on each NOTIFY; the yielded event is set if the connection dies."""
    url = make_url(database_url).set(drivername="postgresql")
    lost = asyncio.Event()

    def notified(*_: Any) -> None:
        on_notify()

    async with translated():
        conn = await asyncpg.connect(url.render_as_string(hide_password=False))
    try:
        conn.add_termination_listener(lambda *_: lost.set())
        async with translated():
            await conn.add_listener(channel, notified)
        yield lost
    finally:
        if not conn.is_closed():
            conn.terminate()
