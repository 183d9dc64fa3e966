"""The messages the service sends: status events (CONTRACT.md §2) and image messages."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from services.broker.topology import IMAGE_ROUTING_KEY, Topology
from services.db.rows import ImageRow, Outgoing, TaskRow
from statemachine import RetryLater, TaskStatus

ATTEMPT_HEADER = "x-imagegen-attempt"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def status_routing_key(status: TaskStatus) -> str:
    return f"task.status.{status.value.lower()}"


def _images(images: list[ImageRow]) -> list[dict[str, Any]]:
    return [
        {"index": i.index, "url": i.url} for i in sorted(images, key=lambda i: i.index) if i.url
    ]


@dataclass(frozen=True)
class Events:
    """Builds outgoing messages for one topology."""

    topology: Topology

    def _event(self, event_type: str, correlation_id: str | None, **fields: Any) -> Outgoing:
        """The common body of CONTRACT.md §2, with a fresh ``event_id``."""
        event_id = str(uuid.uuid4())
        body = {"event_id": event_id, "event_type": event_type, "occurred_at": _now(), **fields}
        return Outgoing(
            exchange=self.topology.status_exchange,
            routing_key=event_type,
            body=body,
            message_id=event_id,
            correlation_id=correlation_id,
        )

    def status(
        self,
        task: TaskRow,
        event_type: str,
        *,
        previous: TaskStatus | None,
        images: list[ImageRow] | None = None,
        error: dict[str, str] | None = None,
        retry: dict[str, Any] | None = None,
    ) -> Outgoing:
        extra = {"retry": retry} if retry is not None else {}
        return self._event(
            event_type,
            task.correlation_id,
            task_id=task.id,
            user_id=task.user_id,
            status=task.status.value,
            previous_status=previous.value if previous else None,
            version=task.version,
            images=_images(images or []),
            images_ready=task.images_ready,
            image_count=task.image_count,
            error=error,
            metadata=task.meta,
            **extra,
        )

    def changed(self, task: TaskRow, previous: TaskStatus, **kw: Any) -> Outgoing:
        """The event for a status change into ``task.status``."""
        return self.status(task, status_routing_key(task.status), previous=previous, **kw)

    def image_ready(self, task: TaskRow, image: ImageRow) -> Outgoing:
        return self.status(task, "task.image.ready", previous=task.status, images=[image])

    def retrying(
        self, task: TaskRow, image: ImageRow, decision: RetryLater, error: str
    ) -> Outgoing:
        retry = {
            "index": image.index,
            "attempt": decision.retry,
            "delay_s": decision.delay_s,
            "reason": decision.reason,
            "error": error,
        }
        return self.status(task, "task.image.retrying", previous=task.status, retry=retry)

    def rejected(
        self,
        event_type: str,
        task_id: str,
        code: str,
        reason: str,
        *,
        task: TaskRow | None = None,
        user_id: str | None = None,
        correlation_id: str | None = None,
    ) -> Outgoing:
        """``task.rejected`` / ``task.cancel_rejected``: about a request, so no version."""
        return self._event(
            event_type,
            correlation_id,
            task_id=task_id,
            user_id=task.user_id if task else user_id,
            status=task.status.value if task else None,
            previous_status=None,
            version=None,
            images=[],
            images_ready=task.images_ready if task else 0,
            image_count=task.image_count if task else None,
            error={"code": code, "message": reason},
            metadata=task.meta if task else None,
        )

    def image_message(self, image: ImageRow, retry: RetryLater | None = None) -> Outgoing:
        """The live message for ``image``: to the work exchange, or to a retry tier."""
        if retry is None:
            exchange, routing_key = self.topology.work_exchange, IMAGE_ROUTING_KEY
        else:
            exchange, routing_key = "", self.topology.retry_queue(retry.kind, retry.tier).name
        return Outgoing(
            exchange=exchange,
            routing_key=routing_key,
            body={
                "task_id": image.task_id,
                "index": image.index,
                "image_id": image.id,
                "dispatch": image.dispatch,
                "attempt": image.attempts,
            },
            message_id=str(uuid.uuid4()),
            headers={ATTEMPT_HEADER: image.attempts},
        )
