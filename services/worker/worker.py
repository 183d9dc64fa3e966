"""One image message: check, take the image and a global slot, generate, store or retry.

Never paying twice rests on three things: an image already stored is never requested
again; the provider task id is stored as soon as the submit answers, so a redelivery polls
it instead of submitting; and only one worker at a time holds an image (advisory lock),
while stale copies of a message (an older ``dispatch``) are dropped.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, replace
from typing import Any

from aio_pika.abc import AbstractIncomingMessage

from services import metrics
from services.broker.errors import Drop, Reject
from services.config import Settings
from services.db.errors import DatabaseUnavailable, LostRace
from services.db.locks import ProviderSlots
from services.db.pacing import SubmitPacer
from services.db.repository import Repository
from services.db.rows import ImageRow, TaskRow, planned
from services.events import Events
from services.logs import get_logger
from services.provider.dashscope import DashScopeClient, ProviderTaskStatus, TaskResult
from services.provider.errors import ProviderError, ProviderTaskFailed, ProviderTaskLost
from services.worker.failures import Failures
from services.worker.message import ImageMessage
from services.worker.views import TaskView, TaskViews
from statemachine import TaskStatus, Trigger

log = get_logger("imagegen.worker")
PROVIDER_ID_WRITE_TRIES = 8
CAS_TRIES = 50


@dataclass(frozen=True)
class Generated:
    url: str
    provider_s: float
    """Time inside provider calls: the submit, if one went out, and the wait."""


def _at(images: list[ImageRow], index: int) -> ImageRow | None:
    return next((i for i in images if i.index == index), None)


def _provider_code(exc: ProviderError) -> str:
    failure = exc.failure
    return failure.code or (str(failure.http_status) if failure.http_status else "transport")


class ImageWorker:
    def __init__(
        self,
        settings: Settings,
        repo: Repository,
        slots: ProviderSlots,
        client: DashScopeClient,
        events: Events,
        pacer: SubmitPacer,
    ) -> None:
        self.settings = settings
        self.repo = repo
        self.slots = slots
        self.client = client
        self.events = events
        self.pacer = pacer
        self.views = TaskViews()
        self.failures = Failures(settings, repo, events)

    async def __call__(self, message: AbstractIncomingMessage) -> None:
        msg = ImageMessage.parse(message.body)
        fields = {"task_id": msg.task_id, "image_index": msg.index, "attempt": msg.attempt}
        async with self.slots.hold(msg.image_id, (msg.task_id, msg.dispatch)) as claim:
            if claim is None:
                raise Drop(f"image {msg.task_id}/{msg.index} is held by another worker")
            try:
                with self.views.of(msg.task_id) as view:
                    # The rows the claim read as it marked the submit as going out: the
                    # image as first read, and the store's first guess of the task.
                    task, image = self._live(msg, claim.task, _at(claim.images, msg.index))
                    log.info("image started", action="image_started", **fields)
                    task, outcome = await self._attempt(msg, task, image, claim.images, view)
                    if isinstance(outcome, ProviderError):
                        await self.failures.record(msg, image, outcome)
                        return
                    await self._store(msg, outcome, task, image, claim.images, view)
            finally:
                log.info("slot freed", action="slot_freed", **fields)

    async def _attempt(
        self,
        msg: ImageMessage,
        task: TaskRow,
        image: ImageRow,
        images: list[ImageRow],
        view: TaskView,
    ) -> tuple[TaskRow, Generated | ProviderError]:
        """Generate the image, starting a PENDING task meanwhile: the start need not hold
        the submit back, and what follows the provider's answer (the store, a retry)
        waits for it, without the slot. Returns the task as the start left it, and the
        image or the provider's failure."""
        starting = None
        if task.status is TaskStatus.PENDING:
            starting = asyncio.ensure_future(self._start(msg, task, image, images, view))
        outcome: Generated | ProviderError
        try:
            outcome = await self._generate(task, image)
        except ProviderError as exc:
            outcome = exc
        finally:
            # The provider is done with the image: its slot can serve the next while this
            # one is recorded, under the image lock alone.
            self.slots.free_slot(msg.image_id)
            if starting is not None:
                task = await starting
        return task, outcome

    async def _start(
        self,
        msg: ImageMessage,
        task: TaskRow,
        image: ImageRow,
        images: list[ImageRow],
        view: TaskView,
    ) -> TaskRow:
        """Start a PENDING task as its first image's submit goes out: a compare-and-set
        written with its event. A task's images usually try it together, in this process
        by turns (``view``). Returns the task as the start left it."""
        async with view.turn, self.repo.autocommit() as tx:
            newest, images = view.newest(task, images, image)
            task, _ = self._live(msg, newest, image)
            for _ in range(CAS_TRIES):
                if task.status is not TaskStatus.PENDING:
                    return task
                started = planned(task, Trigger.START)
                event = self.events.changed(started, task.status)
                written, found = await tx.write(task, started, [event])
                view.saw(found, images)
                if written:
                    log.info("task started", action="task_started", task_id=task.id)
                else:
                    metrics.TASK_WRITE_CONFLICTS.labels("start").inc()
                task, _ = self._live(msg, found, image)
        raise LostRace()

    @staticmethod
    def _live(
        msg: ImageMessage, task: TaskRow | None, image: ImageRow | None
    ) -> tuple[TaskRow, ImageRow]:
        if task is None or image is None or image.id != msg.image_id:
            raise Reject(f"image message for unknown task or image {msg.task_id}/{msg.index}")
        if not task.active:
            raise Drop(f"task {task.id} is {task.status.value}; image {msg.index} not needed")
        if image.stored:
            raise Drop(f"image {task.id}/{msg.index} is already stored")
        if image.dispatch != msg.dispatch:
            raise Drop(f"stale message for {task.id}/{msg.index} (dispatch {msg.dispatch})")
        return task, image

    async def _generate(self, task: TaskRow, image: ImageRow) -> Generated:
        provider_task_id = image.provider_task_id
        submitted_at: float | None = None
        provider_s = 0.0
        recording: asyncio.Future[None] | None = None
        if provider_task_id is None:
            self._check_unrecorded(task, image)
            await self.pacer.wait()
            submitted_at = time.monotonic()
            try:
                submitted = await self.client.submit(task.prompt, n=1)
            except ProviderError as exc:
                metrics.PROVIDER_CALLS.labels("submit", "error", _provider_code(exc)).inc()
                if exc.ambiguous:
                    log.warning(
                        "submit outcome unknown; the provider may have billed it",
                        action="submit_ambiguous",
                        task_id=task.id,
                        image_index=image.index,
                        error=str(exc),
                    )
                raise
            metrics.PROVIDER_CALLS.labels("submit", "ok", "").inc()
            provider_s = time.monotonic() - submitted_at
            metrics.PROVIDER_SECONDS.labels("submit").observe(provider_s)
            provider_task_id = submitted.task_id
            # The id is on its way to the database while the poll goes out: a poll does
            # not need it, and whatever follows the answer writes the image after it.
            recording = asyncio.ensure_future(self._remember(image, provider_task_id))
        else:
            log.info(
                "polling the provider task of an earlier attempt",
                action="resume_poll",
                task_id=task.id,
                image_index=image.index,
                provider_task_id=provider_task_id,
            )
        waited_at = time.monotonic()
        try:
            result = await self.client.wait(
                provider_task_id,
                submitted_at=submitted_at,
                on_poll=self._watch(task.id, provider_task_id),
            )
            waited_s = time.monotonic() - waited_at
        finally:
            if recording is not None:
                await recording
        metrics.PROVIDER_SECONDS.labels("wait").observe(waited_s)
        return Generated(self._url_of(result), provider_s + waited_s)

    @staticmethod
    def _check_unrecorded(task: TaskRow, image: ImageRow) -> None:
        """A submit is going out, and the claim's read marked it so. A mark already there
        means an earlier attempt's process died before recording the answer: DashScope has
        no idempotency key, so that submit may have been billed and is counted for review.
        A process that dies after the mark but before its submit leaves one too: counting
        one too many is the safe side."""
        if image.submit_started_at is None:
            return
        metrics.UNRECORDED_SUBMITS.inc()
        log.warning(
            "an earlier submit's answer was never recorded; it may have been billed",
            action="submit_unrecorded",
            task_id=task.id,
            image_index=image.index,
        )

    async def _remember(self, image: ImageRow, provider_task_id: str) -> None:
        # The submit is paid for: losing its id would mean paying again, so insist a while.
        for attempt in range(PROVIDER_ID_WRITE_TRIES):
            try:
                await self.slots.record_provider_task(image.id, provider_task_id)
                return
            except DatabaseUnavailable:
                if attempt == PROVIDER_ID_WRITE_TRIES - 1:
                    raise
                await asyncio.sleep(0.25 * 2**attempt)

    def _watch(self, task_id: str, provider_task_id: str) -> Any:
        async def on_poll(result: TaskResult | None) -> None:
            async with self.repo.autocommit() as tx:
                task = await tx.get_task(task_id)
            if task is not None and task.active:
                return
            if result is None or result.status is ProviderTaskStatus.PENDING:
                try:
                    await self.client.cancel(provider_task_id)
                except ProviderError:
                    pass  # best effort: the task may just have started running
            raise Drop(f"task {task_id} ended while its image was being generated")

        return on_poll

    @staticmethod
    def _url_of(result: TaskResult) -> str:
        if result.status is ProviderTaskStatus.SUCCEEDED:
            metrics.PROVIDER_CALLS.labels("task", "succeeded", "").inc()
            if result.urls:
                return result.urls[0]
            entry = result.results[0] if result.results else None
            raise ProviderTaskFailed(
                entry.code if entry else None,
                (entry.message if entry else None) or "succeeded without an image",
            )
        if result.status is ProviderTaskStatus.FAILED:
            metrics.PROVIDER_CALLS.labels("task", "failed", result.code or "").inc()
            raise ProviderTaskFailed(result.code, result.message or "provider task failed")
        metrics.PROVIDER_CALLS.labels("task", result.status.value.lower(), "").inc()
        raise ProviderTaskLost(f"provider task {result.task_id} is {result.status.value}")

    async def _store(
        self,
        msg: ImageMessage,
        generated: Generated,
        task: TaskRow,
        own: ImageRow,
        images: list[ImageRow],
        view: TaskView,
    ) -> None:
        """Store the image's URL, and finish the task with its last image. The first try
        writes against the newest task this process knows of (as the claim read it or the
        start left it, or as another of its images left it), saving a read; a write that
        loses the race returns the task as the winner left it."""
        async with view.turn, self.repo.autocommit() as tx:
            newest, images = view.newest(task, images, own)
            found: TaskRow | None = newest
            for _ in range(CAS_TRIES):
                image = _at(images, msg.index)
                if found is None or image is None:
                    raise Reject(f"task {msg.task_id} vanished while its image was generated")
                if image.stored:
                    raise Drop(f"image {msg.task_id}/{msg.index} was stored meanwhile")
                if found.status is not TaskStatus.GENERATING_IMAGES:
                    raise Drop(f"task {found.id} is {found.status.value}; the image is not stored")
                stored = replace(image, url=generated.url, provider_seconds=generated.provider_s)
                done = [stored if i.index == msg.index else i for i in images]
                row = planned(found, Trigger.STORE_IMAGE, stored_now=1)
                outgoing = [self.events.image_ready(replace(row, status=found.status), stored)]
                if row.status is TaskStatus.IMAGES_READY:
                    if sum(i.stored for i in images) != found.images_ready:
                        # The last image's event lists every URL: read those stored since.
                        found, images = await tx.get_task_with_images(msg.task_id)
                        continue
                    row = replace(row, version=row.version + 1)
                    outgoing.append(self.events.changed(row, found.status, images=done))
                # Another image of the task may be stored meanwhile (they finish close
                # together): then nothing is written, and the next pass tries on what it left.
                written, found = await tx.write(found, row, outgoing, store=stored)
                if written:
                    view.saw(found, done)
                    break
                metrics.TASK_WRITE_CONFLICTS.labels("store").inc()
                view.saw(found, images)
            else:
                raise LostRace()
        self.slots.finished(msg.image_id)
        metrics.IMAGES_STORED.inc()
        log.info(
            f"image {row.images_ready}/{row.image_count} stored",
            action="image_stored",
            task_id=msg.task_id,
            image_index=msg.index,
            attempt=msg.attempt,
        )
        if row.status is TaskStatus.IMAGES_READY:
            metrics.task_finished(row.status.value, row.created_at)
            log.info("task completed", action="task_completed", task_id=row.id)
