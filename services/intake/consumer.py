"""The intake handler: ``task.created`` and ``task.cancel`` from the tasks exchange."""

from __future__ import annotations

from aio_pika.abc import AbstractIncomingMessage

from services.broker.errors import Drop, Reject
from services.db.locks import ProviderSlots
from services.db.repository import Repository
from services.events import Events
from services.intake.commands import Conflict, cancel_task, create_task
from services.intake.schema import (
    InvalidRequest,
    TaskCancel,
    TaskCreated,
    decode,
    usable_task_id,
    validate,
)


class IntakeHandler:
    def __init__(
        self, repo: Repository, events: Events, slots: ProviderSlots | None = None
    ) -> None:
        self.repo = repo
        self.events = events
        self.slots = slots

    async def __call__(self, message: AbstractIncomingMessage) -> None:
        routing_key = message.routing_key or ""
        correlation_id = message.correlation_id
        unreadable: InvalidRequest | None = None
        try:
            value = decode(message.body)
        except InvalidRequest as exc:
            value, unreadable = exc.named, exc
        task_id = usable_task_id(value)
        user_id = value.get("user_id") if isinstance(value.get("user_id"), str) else None

        def rejected(reason: str) -> Reject:
            event = None
            if task_id is not None:
                event = self.events.rejected(
                    "task.rejected",
                    task_id,
                    "invalid_request",
                    reason,
                    user_id=user_id,
                    correlation_id=correlation_id,
                )
            return Reject(reason, event)

        if unreadable is not None:
            raise rejected(str(unreadable))
        if correlation_id is not None and "\x00" in correlation_id:
            # Copied onto every event through the outbox, and PostgreSQL text holds no NUL.
            raise rejected("correlation_id must not contain NUL characters")
        if routing_key == "task.created":
            try:
                created = validate(TaskCreated, value)
            except InvalidRequest as exc:
                raise rejected(f"invalid task.created: {exc}") from None
            new = created.new_task(correlation_id)
            try:
                result = await create_task(self.repo, self.events, new, self.slots)
            except Conflict as exc:
                raise rejected(f"conflicting task.created: {exc}") from None
            if result.duplicate:
                raise Drop(f"duplicate task.created for {new.id}")
        elif routing_key == "task.cancel":
            try:
                cancel = validate(TaskCancel, value)
            except InvalidRequest as exc:
                raise rejected(f"invalid task.cancel: {exc}") from None
            await cancel_task(
                self.repo,
                self.events,
                cancel.task_id,
                cancel.reason,
                correlation_id=correlation_id,
            )
        else:
            raise rejected(f"unknown routing key {routing_key!r}")
