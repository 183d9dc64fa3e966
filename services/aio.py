"""Small asyncio helpers the long-running loops share."""

from __future__ import annotations

import asyncio


async def wait_any(*events: asyncio.Event, seconds: float | None) -> bool:
    """Wait until one of ``events`` is set or ``seconds`` pass; True if an event was set."""
    if any(e.is_set() for e in events):
        return True
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        done, _ = await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
    return bool(done)
