"""The schema, as SQLAlchemy 2 declarative models (Alembic compares migrations against it)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Identity,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from statemachine import TaskStatus

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

_STATUSES = ", ".join(f"'{s.value}'" for s in TaskStatus)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Task(Base):
    __tablename__ = "tasks"
    __table_args__ = (
        CheckConstraint(f"status IN ({_STATUSES})", name="status"),
        CheckConstraint("image_count BETWEEN 1 AND 4", name="image_count"),
        # Status first, for the reconciler's scan of active tasks; the id with it, so that
        # a compare-and-set (id and status) finds its row through this index as exactly as
        # through the primary key, whichever of the two the planner picks (migration 0006).
        Index("ix_tasks_status_id", "status", "id"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(128))
    prompt: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(32))
    version: Mapped[int] = mapped_column(Integer)
    """Rises by one with every change a subscriber hears about."""
    image_count: Mapped[int] = mapped_column(SmallInteger)
    images_ready: Mapped[int] = mapped_column(SmallInteger, server_default="0")
    meta: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSONB)
    correlation_id: Mapped[str | None] = mapped_column(String(255))
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    image_generation_started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    image_generation_completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    failed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    cancelled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class TaskImage(Base):
    """One image slot of a task, created with the task; ``url`` is set once it is stored."""

    __tablename__ = "task_images"
    __table_args__ = (
        UniqueConstraint("task_id", "index", name="uq_task_images_task_id_index"),
        CheckConstraint('"index" BETWEEN 0 AND 3', name="index"),
    )

    id: Mapped[int] = mapped_column(Integer, Identity(), primary_key=True)
    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"))
    index: Mapped[int] = mapped_column(SmallInteger)
    url: Mapped[str | None] = mapped_column(Text)
    stored_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    provider_task_id: Mapped[str | None] = mapped_column(String(128))
    """Set as soon as the provider accepts a submit, so a retry polls instead of paying again."""
    attempts: Mapped[int] = mapped_column(SmallInteger, server_default="0")
    """Failed attempts so far (the retries this image has had)."""
    dispatch: Mapped[int] = mapped_column(Integer, server_default="0")
    """Which image message is the live one; a message carrying another number is stale."""
    submits: Mapped[int] = mapped_column(SmallInteger, server_default="0")
    submit_started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    """Set just before a submit goes out, cleared once its outcome is recorded."""
    unrecorded_submits: Mapped[int] = mapped_column(SmallInteger, server_default="0")
    """Submits that may have been billed without their task id ever being recorded."""
    last_error: Mapped[str | None] = mapped_column(Text)
    provider_seconds: Mapped[float | None] = mapped_column(Float)
    """Time the attempt that stored the image spent inside provider calls (its submit,
    if it made one, and the wait for the provider task)."""
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class OutboxMessage(Base):
    """A message to publish, written in the same transaction as the change that causes it."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    exchange: Mapped[str] = mapped_column(String(255))
    routing_key: Mapped[str] = mapped_column(String(255))
    body: Mapped[dict[str, Any]] = mapped_column(JSONB)
    headers: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    message_id: Mapped[str] = mapped_column(String(64))
    correlation_id: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class ProviderPacing(Base):
    """When the next provider submit may go out, shared by every worker of a namespace."""

    __tablename__ = "provider_pacing"

    namespace: Mapped[str] = mapped_column(String(64), primary_key=True)
    next_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


tasks = cast(Table, Task.__table__)
task_images = cast(Table, TaskImage.__table__)
outbox = cast(Table, OutboxMessage.__table__)
provider_pacing = cast(Table, ProviderPacing.__table__)
