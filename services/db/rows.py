"""Plain, immutable views of database rows, what the service asks to write, and the rows
a change makes (as the state machine decides it)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from functools import cache
from typing import Any

from sqlalchemy import RowMapping

from statemachine import ACTIVE_STATUSES, TaskModel, TaskStatus, Trigger, apply_trigger


@cache
def _field_names(cls: type) -> frozenset[str]:
    return frozenset(f.name for f in fields(cls))


def _row(cls: type, mapping: Mapping[str, Any] | RowMapping) -> Any:
    names = _field_names(cls)
    return cls(**{k: v for k, v in mapping.items() if k in names})


@dataclass(frozen=True)
class TaskRow:
    id: str
    user_id: str
    prompt: str
    status: TaskStatus
    version: int
    image_count: int
    images_ready: int
    meta: dict[str, Any] | None
    correlation_id: str | None
    error_code: str | None
    error_message: str | None
    created_at: datetime
    updated_at: datetime
    image_generation_started_at: datetime | None
    image_generation_completed_at: datetime | None
    failed_at: datetime | None
    cancelled_at: datetime | None

    @classmethod
    def of(cls, mapping: Mapping[str, Any] | RowMapping) -> TaskRow:
        data = dict(mapping)
        data["meta"] = data.pop("metadata", data.get("meta"))
        data["status"] = TaskStatus(data["status"])
        row: TaskRow = _row(cls, data)
        return row

    @property
    def active(self) -> bool:
        return self.status in ACTIVE_STATUSES


@dataclass(frozen=True)
class ImageRow:
    id: int
    task_id: str
    index: int
    url: str | None
    stored_at: datetime | None
    provider_task_id: str | None
    attempts: int
    dispatch: int
    submits: int
    last_error: str | None
    submit_started_at: datetime | None = None
    unrecorded_submits: int = 0
    provider_seconds: float | None = None

    @classmethod
    def of(cls, mapping: Mapping[str, Any] | RowMapping) -> ImageRow:
        row: ImageRow = _row(cls, mapping)
        return row

    @property
    def stored(self) -> bool:
        return self.url is not None


@dataclass(frozen=True)
class NewTask:
    id: str
    user_id: str
    prompt: str
    image_count: int = 4
    meta: dict[str, Any] | None = None
    correlation_id: str | None = None

    def same_request(self, row: TaskRow) -> bool:
        """Whether a repeated creation asks for exactly what the stored task holds."""
        return (self.user_id, self.prompt, self.image_count, self.meta or None) == (
            row.user_id,
            row.prompt,
            row.image_count,
            row.meta or None,
        )


@dataclass(frozen=True)
class Outgoing:
    """A message for the outbox: where it goes and what it says."""

    exchange: str
    routing_key: str
    body: dict[str, Any]
    message_id: str
    headers: dict[str, Any] = field(default_factory=dict)
    correlation_id: str | None = None


@dataclass(frozen=True)
class OutboxRow(Outgoing):
    id: int = 0


IMAGE_PREFIX = "i__"
"""Prefixes an image's columns where a task is read joined with its images (no task
column starts with it)."""
_Columns = tuple[tuple[int, str], ...]


def new_rows(new: NewTask, image_ids: Sequence[int]) -> tuple[TaskRow, list[ImageRow]]:
    """The rows inserting ``new`` creates, the columns' defaults included (timestamps
    aside: the database sets them)."""
    now = datetime.now(UTC)
    task = TaskRow(
        id=new.id,
        user_id=new.user_id,
        prompt=new.prompt,
        status=TaskStatus.PENDING,
        version=1,
        image_count=new.image_count,
        images_ready=0,
        meta=new.meta,
        correlation_id=new.correlation_id,
        error_code=None,
        error_message=None,
        created_at=now,
        updated_at=now,
        image_generation_started_at=None,
        image_generation_completed_at=None,
        failed_at=None,
        cancelled_at=None,
    )
    images = [
        ImageRow(
            id=image_id,
            task_id=new.id,
            index=index,
            url=None,
            stored_at=None,
            provider_task_id=None,
            attempts=0,
            dispatch=0,
            submits=0,
            last_error=None,
        )
        for index, image_id in enumerate(image_ids)
    ]
    return task, images


@cache
def _joined_columns(keys: tuple[str, ...]) -> tuple[_Columns, _Columns, int]:
    """Where a task joined with its images keeps each row's columns: (position, name) of
    the task's, of the image's (unprefixed), and the position of the image's id. Worked
    out once per statement rather than per row: the prefix tests were most of a read."""
    task = tuple((i, k) for i, k in enumerate(keys) if not k.startswith(IMAGE_PREFIX))
    image = tuple(
        (i, k[len(IMAGE_PREFIX) :]) for i, k in enumerate(keys) if k.startswith(IMAGE_PREFIX)
    )
    return task, image, keys.index(f"{IMAGE_PREFIX}id")


def split_joined(rows: Sequence[Any]) -> tuple[TaskRow | None, list[ImageRow]]:
    """A task joined with its images (columns prefixed) back into rows."""
    if not rows:
        return None, []
    task_columns, image_columns, image_id = _joined_columns(tuple(rows[0].keys()))
    images = [
        ImageRow.of({k: row[i] for i, k in image_columns})
        for row in rows
        if row[image_id] is not None
    ]
    return TaskRow.of({k: rows[0][i] for i, k in task_columns}), images


# Columns a transition may also set from a value (never from outside input).
_TRANSITION_VALUES = frozenset({"error_code", "error_message"})


def planned(task: TaskRow, trigger: Trigger, *, stored_now: int = 0, **values: Any) -> TaskRow:
    """The row ``trigger`` makes of ``task``, as the state machine decides it: what a
    compare-and-set from ``task`` writes (timestamps aside). ``IllegalTransition``
    propagates."""
    images_ready = task.images_ready + stored_now
    model = TaskModel(task.status, images_ready=images_ready, image_count=task.image_count)
    target = apply_trigger(model, trigger)
    for column in values:
        if column not in _TRANSITION_VALUES:
            raise ValueError(f"a transition does not set {column!r}")
    return replace(
        task, status=target, version=task.version + 1, images_ready=images_ready, **values
    )
