"""Spacing provider submits across every worker process.

DashScope limits submissions per account (2/s for the wanx2.1 models); going over earns a
429 and a 30 s retry tier, and a sustained burst can exhaust an image's retries. Each
submit reserves the next free moment in one shared row, so all workers together keep the
account's pace; 429 handling stays as the backstop.
"""

from __future__ import annotations

import asyncio

from services.db.engine import Database

_RESERVE = (
    "INSERT INTO provider_pacing (namespace, next_at)"
    " VALUES ($1, clock_timestamp() + make_interval(secs => $2))"
    " ON CONFLICT (namespace) DO UPDATE SET next_at ="
    " greatest(provider_pacing.next_at, clock_timestamp()) + make_interval(secs => $2)"
    " RETURNING (extract(epoch FROM next_at - clock_timestamp()) - $2)::float8"
)


class SubmitPacer:
    def __init__(self, db: Database, namespace: str, rate_per_s: float) -> None:
        self.db = db
        self.namespace = namespace
        self.gap_s = 1 / rate_per_s if rate_per_s > 0 else 0.0

    async def wait(self) -> float:
        """Wait for this submit's turn; returns the seconds waited."""
        if not self.gap_s:
            return 0.0
        async with self.db.checkout() as conn:
            delay = float(await conn.fetchval(_RESERVE, self.namespace, self.gap_s) or 0.0)
        if delay > 0:
            await asyncio.sleep(delay)
        return max(delay, 0.0)
