"""Prometheus metrics. Objects only: nothing is served or pushed from here."""

from __future__ import annotations

from datetime import UTC, datetime

from prometheus_client import Counter, Gauge, Histogram

MESSAGES = Counter(
    "imagegen_messages_total", "Messages handled, by queue role and outcome", ["role", "outcome"]
)
HANDLER_SECONDS = Histogram(
    "imagegen_handler_seconds",
    "Time to handle one message, by queue role",
    ["role"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
IMAGES_STORED = Counter("imagegen_images_stored_total", "Images stored")
PROVIDER_CALLS = Counter(
    "imagegen_provider_calls_total",
    "Provider calls, by call, outcome and code",
    ["call", "outcome", "code"],
)
PROVIDER_SECONDS = Histogram(
    "imagegen_provider_call_seconds",
    "Time inside provider calls that answered: a submit, or the wait for a provider task to"
    " end (its polls and the pauses between them)",
    ["call"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
UNRECORDED_SUBMITS = Counter(
    "imagegen_submits_unrecorded_total",
    "Submits whose outcome was never recorded (a crash or an ambiguous timeout): each may"
    " have been billed for a task nobody polls",
)
RETRIES = Counter("imagegen_retries_total", "Image retries scheduled, by tier queue", ["tier"])
DEAD_LETTERED = Counter(
    "imagegen_dead_lettered_total", "Messages parked in the dead queue", ["role"]
)
TASKS_FINISHED = Counter(
    "imagegen_tasks_finished_total", "Tasks reaching a final state", ["status"]
)
TASK_SECONDS = Histogram(
    "imagegen_task_seconds",
    "Time from a task's creation to its final state, by final status",
    ["status"],
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
)
SLOTS_IN_USE = Gauge("imagegen_slots_in_use", "Global provider slots this process holds")
SLOT_WAIT_SECONDS = Histogram(
    "imagegen_slot_wait_seconds",
    "Time waiting for a global provider slot",
    buckets=(0.001, 0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60),
)
TASK_WRITE_CONFLICTS = Counter(
    "imagegen_task_write_conflicts_total",
    "Task writes that lost a compare-and-set to another writer and were tried again, by write",
    ["write"],
)
OUTBOX_PUBLISHED = Counter("imagegen_outbox_published_total", "Outbox rows published")
OUTBOX_FAILED = Counter(
    "imagegen_outbox_publish_failures_total", "Outbox rows that failed to publish"
)
RECONCILED = Counter(
    "imagegen_reconciled_images_total", "Images dispatched again by the reconciler"
)


def task_finished(status: str, created_at: datetime) -> None:
    """A task reached ``status``, a final one. Its age is read against this process's clock
    (``created_at`` is the database's), so a skewed host can shift it; never below zero."""
    TASKS_FINISHED.labels(status).inc()
    age_s = (datetime.now(UTC) - created_at).total_seconds()
    TASK_SECONDS.labels(status).observe(max(age_s, 0.0))
