"""Creating and cancelling tasks: each one atomic write, events through the outbox.

Both doors (the ``task.created`` / ``task.cancel`` events and the admin HTTP routes) go
through these functions, so they behave the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from services import metrics
from services.db.errors import LostRace
from services.db.locks import ProviderSlots
from services.db.repository import Repository, Tx
from services.db.rows import ImageRow, NewTask, Outgoing, TaskRow
from services.errors import ImagegenError
from services.events import Events
from services.logs import get_logger
from statemachine import TaskStatus, Trigger, can_fire

log = get_logger("imagegen.intake")
RUNNING_LOG_MAX_AGE_S = 0.2
"""The "task queued (running n/max)" line may show a count this old: under a burst of
tasks, one count serves many lines instead of a lock-table scan each."""


class Conflict(ImagegenError):
    """The task id is taken by a task with different content."""

    def __init__(self, task: TaskRow) -> None:
        self.task = task
        super().__init__(
            f"task_id {task.id!r} already exists with different content "
            "(user_id, prompt, image_count or metadata)"
        )


@dataclass(frozen=True)
class Created:
    task: TaskRow
    duplicate: bool
    """True when the same request had already created the task: nothing new was done."""


async def create_task(
    repo: Repository, events: Events, new: NewTask, slots: ProviderSlots | None = None
) -> Created:
    def announce(task: TaskRow, images: list[ImageRow]) -> list[Outgoing]:
        return [
            events.status(task, "task.status.pending", previous=None),
            *(events.image_message(image) for image in images),
        ]

    ids = await repo.image_ids(new.image_count)
    async with repo.autocommit() as tx:
        inserted = await tx.insert_task(new, announce, ids)
        if inserted is None:
            existing = await tx.get_task(new.id)
            if existing is None:  # deleted in between; let the caller's redelivery try again
                raise LostRace()
            if not new.same_request(existing):
                raise Conflict(existing)
            log.info("duplicate task.created ignored", action="duplicate", task_id=new.id)
            return Created(existing, duplicate=True)
        task, _ = inserted
    running = (
        f"{await slots.running(RUNNING_LOG_MAX_AGE_S)}/{slots.size}" if slots is not None else None
    )
    log.info(
        "task queued",
        action="task_queued",
        task_id=task.id,
        image_count=task.image_count,
        running=running,
    )
    return Created(task, duplicate=False)


class CancelOutcome(StrEnum):
    CANCELLED = "cancelled"
    NOT_FOUND = "not_found"
    NOT_CANCELLABLE = "not_cancellable"


@dataclass(frozen=True)
class CancelResult:
    outcome: CancelOutcome
    task: TaskRow | None


async def cancel_task(
    repo: Repository,
    events: Events,
    task_id: str,
    reason: str | None = None,
    *,
    correlation_id: str | None = None,
) -> CancelResult:
    """Cancel a PENDING or GENERATING_IMAGES task; anything else is refused with an event."""

    async def work(tx: Tx) -> CancelResult:
        task = await tx.get_task(task_id)
        if task is None or not can_fire(task.status, Trigger.CANCEL):
            outcome = CancelOutcome.NOT_FOUND if task is None else CancelOutcome.NOT_CANCELLABLE
            message = (
                "no such task"
                if task is None
                else f"task is {task.status.value} and can no longer be cancelled"
            )
            await tx.add_outbox(
                [
                    events.rejected(
                        "task.cancel_rejected",
                        task_id,
                        outcome.value,
                        message,
                        task=task,
                        correlation_id=correlation_id or (task.correlation_id if task else None),
                    )
                ]
            )
            return CancelResult(outcome, task)
        message = f"cancelled: {reason}" if reason else "cancelled"
        row = await tx.transition(task, Trigger.CANCEL, error_message=message)
        if row is None:
            raise LostRace()
        await tx.add_outbox([events.changed(row, task.status)])
        return CancelResult(CancelOutcome.CANCELLED, row)

    result = await repo.atomic(work)
    if result.outcome is CancelOutcome.CANCELLED and result.task is not None:
        metrics.task_finished(TaskStatus.CANCELLED.value, result.task.created_at)
    log.info(
        "cancel request",
        action="cancel",
        task_id=task_id,
        outcome=result.outcome.value,
        status=result.task.status.value if result.task else None,
    )
    return result
