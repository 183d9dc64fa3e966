"""Reading a test's own queue."""

from __future__ import annotations

import asyncio
import time

from aio_pika.abc import AbstractIncomingMessage, AbstractQueue


async def take(queue: AbstractQueue, n: int, seconds: float = 10) -> list[AbstractIncomingMessage]:
    """Up to ``n`` messages from ``queue``, each acked, waiting at most ``seconds`` for them."""
    got: list[AbstractIncomingMessage] = []
    deadline = time.monotonic() + seconds
    while len(got) < n and time.monotonic() < deadline:
        message = await queue.get(fail=False)
        if message is None:
            await asyncio.sleep(0.02)
            continue
        await message.ack()
        got.append(message)
    return got
