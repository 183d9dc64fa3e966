"""Re-dispatches images that nothing is working on (e.g. after a queue purge).

An image counts as abandoned when its task is still active, it is not stored, no worker
holds it, and nothing has touched it for ``reconcile_stale_after_s``. Dispatching it again
raises its ``dispatch`` number, so the old message, if it still exists somewhere, is dropped
as stale when it arrives: never two live messages for one image.
"""

from __future__ import annotations

import asyncio

from services import metrics
from services.aio import wait_any
from services.db.errors import RepositoryError
from services.db.locks import lock_classes
from services.db.repository import Repository
from services.db.rows import ImageRow
from services.events import Events
from services.logs import get_logger

log = get_logger("imagegen.reconciler")


class Reconciler:
    def __init__(
        self,
        repo: Repository,
        events: Events,
        namespace: str,
        interval_s: float,
        stale_after_s: float,
    ) -> None:
        self.repo = repo
        self.events = events
        self.interval_s = interval_s
        self.stale_after_s = stale_after_s
        _, self.image_class = lock_classes(namespace)

    async def run_once(self) -> int:
        dispatched = 0
        for candidate in await self.repo.stale_images(self.stale_after_s):
            if await self._redispatch(candidate):
                dispatched += 1
        return dispatched

    async def _redispatch(self, candidate: ImageRow) -> bool:
        async with self.repo.transaction() as tx:
            if not await tx.try_image_xact_lock(self.image_class, candidate.id):
                return False  # a worker is on it right now
            task = await tx.get_task(candidate.task_id)
            image = await tx.get_image(candidate.task_id, candidate.index)
            if task is None or image is None or not task.active or image.stored:
                return False
            if image.dispatch != candidate.dispatch:
                return False  # it moved since we looked
            again = await tx.redispatch(image, failed=False, keep_provider_task=True)
            await tx.add_outbox([self.events.image_message(again)])
        metrics.RECONCILED.inc()
        log.warning(
            "abandoned image dispatched again",
            action="reconcile",
            task_id=image.task_id,
            image_index=image.index,
            attempt=image.attempts,
        )
        return True

    async def run(self, stop: asyncio.Event) -> None:
        while not await wait_any(stop, seconds=self.interval_s):
            try:
                await self.run_once()
            except RepositoryError as exc:
                log.warning("reconcile pass failed", action="reconcile", error=str(exc))
