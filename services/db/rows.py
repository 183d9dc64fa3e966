"""Plain, immutable views of database rows, and what the service asks to write."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from functools import cache
from typing import Any

from sqlalchemy import RowMapping

from statemachine import ACTIVE_STATUSES, TaskStatus


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
