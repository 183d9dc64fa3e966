"""Every SQL statement of the data path: the repository's and the lock keeper's, with the
helpers that build their variable parts."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from services.db.models import task_images
from services.db.rows import IMAGE_PREFIX, Outgoing
from statemachine import ACTIVE_STATUSES, TaskStatus

# The timestamp column each status sets when a task enters it.
ENTERED_AT = {
    TaskStatus.GENERATING_IMAGES: "image_generation_started_at",
    TaskStatus.IMAGES_READY: "image_generation_completed_at",
    TaskStatus.FAILED: "failed_at",
    TaskStatus.CANCELLED: "cancelled_at",
}

NEXT_IMAGE_IDS = (
    "SELECT nextval(pg_get_serial_sequence('task_images', 'id')) FROM generate_series(1, $1)"
)
INSERT_TASK = (
    "INSERT INTO tasks (id, user_id, prompt, status, version, image_count, metadata,"
    " correlation_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
    " ON CONFLICT (id) DO NOTHING RETURNING *"
)
INSERT_IMAGES = (
    'INSERT INTO task_images (id, task_id, "index")'
    " SELECT u.id, $1, u.n - 1 FROM unnest($9::bigint[]) WITH ORDINALITY AS u(id, n)"
    " WHERE EXISTS (SELECT 1 FROM t)"
)
GET_TASK = "SELECT * FROM tasks WHERE id = $1"
GET_IMAGES = 'SELECT * FROM task_images WHERE task_id = $1 ORDER BY "index"'
GET_IMAGE = 'SELECT * FROM task_images WHERE task_id = $1 AND "index" = $2'
JOINED_COLUMNS = "t.*, " + ", ".join(
    f'i."{c.name}" AS {IMAGE_PREFIX}{c.name}' for c in task_images.c
)
"""A task ``t`` and its images ``i`` as one row each, which ``split_joined`` takes apart."""
TASK_JOIN_IMAGES = (
    f"SELECT {JOINED_COLUMNS} FROM tasks t LEFT JOIN task_images i ON i.task_id = t.id"
)
GET_TASK_AND_IMAGE = f'{TASK_JOIN_IMAGES} AND i."index" = $2 WHERE t.id = $1'
GET_TASK_WITH_IMAGES = f'{TASK_JOIN_IMAGES} WHERE t.id = $1 ORDER BY i."index"'
# Compare-and-set: only the task as it was read (same status, same version) matches.
CAS = "WHERE id = $1 AND status = $2 AND version = $3"
# A write that lost its compare-and-set reads the task in the same statement. A locking
# read, because a plain one would see the statement's snapshot: the row as it was before
# the winner, whose commit the update may have waited for.
CURRENT = "current AS (SELECT * FROM tasks WHERE id = $1 AND NOT EXISTS (SELECT FROM t) FOR SHARE)"
WRITTEN_OR_CURRENT = "SELECT true AS written, * FROM t UNION ALL SELECT false, * FROM current"
TOUCH = f"UPDATE tasks SET version = version + 1, updated_at = now() {CAS} RETURNING *"
OUTBOX_COLUMNS = "exchange, routing_key, body, headers, message_id, correlation_id"
# Stores provider task ids ($5, image ids; $6, the ids), each counting as a submit and
# taking its submit's mark away. A common table expression of the keeper's ``SETTLE``.
RECORD_PROVIDER_TASKS = (
    "recorded AS (UPDATE task_images i SET provider_task_id = r.provider_task_id,"
    " updated_at = now(), submits = i.submits + 1, submit_started_at = NULL"
    " FROM unnest($5::int[], $6::text[]) AS r(id, provider_task_id) WHERE i.id = r.id)"
)
# Marks the submits of the images in ``w`` (image_id, task_id, dispatch, slot) that hold a
# slot and are live at their dispatch with no provider task yet, counting an earlier mark
# left unrecorded; $9 is the active statuses. A common table expression of the keeper's
# ``CLAIM``, whose read of the rows shares its snapshot: they show the images as they were
# before the mark.
MARK_SUBMITS = (
    "mark AS (UPDATE task_images i SET submit_started_at = now(),"
    " unrecorded_submits = i.unrecorded_submits + (i.submit_started_at IS NOT NULL)::int"
    " FROM w, tasks t WHERE w.slot >= 0 AND i.id = w.image_id AND i.task_id = w.task_id"
    " AND i.dispatch = w.dispatch AND i.provider_task_id IS NULL AND i.url IS NULL"
    " AND t.id = i.task_id AND t.status = ANY($9::text[]))"
)
INSERT_OUTBOX = f"INSERT INTO outbox ({OUTBOX_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)"
TAKE_OUTBOX = (
    "DELETE FROM outbox WHERE id = ANY(ARRAY("
    "SELECT id FROM outbox ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)) RETURNING *"
)
DELETE_OUTBOX = "DELETE FROM outbox WHERE id = ANY($1::bigint[])"
TRY_XACT_LOCK = "SELECT pg_try_advisory_xact_lock($1, $2)"
# Only statuses a task passes through: counting those that hold the whole history (every
# finished task) would scan the table on every scrape of /metrics, 0.13 s at 2 million rows.
COUNT_STATUSES = "SELECT status, count(*) FROM tasks WHERE status = ANY($1::text[]) GROUP BY status"
OUTBOX_LAG = (
    "SELECT count(*), coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 FROM outbox"
)
STALE_IMAGES = (
    "SELECT i.* FROM task_images i JOIN tasks t ON t.id = i.task_id"
    " WHERE t.status = ANY($1::text[]) AND i.url IS NULL"
    " AND i.updated_at < now() - make_interval(secs => $2)"
    " ORDER BY i.updated_at LIMIT $3"
)
ACTIVE_VALUES = [s.value for s in ACTIVE_STATUSES]
"""The active statuses as the statements take them (``MARK_SUBMITS``'s $9 among them)."""
IN_FLIGHT_VALUES = [*ACTIVE_VALUES, TaskStatus.GENERATING_MODEL.value]
"""The statuses of tasks with work still ahead, which ``/metrics`` counts."""

# One round trip: for each image, a free slot (not one this process holds), then the image
# (migrations 0002 and 0005); for each image won, its submit marked and its task read.
CLAIM = (
    "WITH w AS MATERIALIZED (SELECT * FROM unnest($6::int[], $7::text[], $8::int[],"
    " imagegen_acquire_many($1, $2, $3, $4::int[], $5, $6::int[]))"
    " WITH ORDINALITY AS w(image_id, task_id, dispatch, slot, n)),"
    f" {MARK_SUBMITS}"
    f" SELECT w.n AS claim_n, w.slot AS claim_slot, {JOINED_COLUMNS} FROM w"
    " LEFT JOIN tasks t ON w.slot >= 0 AND t.id = w.task_id"
    ' LEFT JOIN task_images i ON i.task_id = t.id ORDER BY w.n, i."index"'
)
# One round trip: provider task ids stored, then slots and images given back.
SETTLE = (
    f"WITH {RECORD_PROVIDER_TASKS}"
    " SELECT pg_advisory_unlock($1, s) FROM unnest($2::int[]) s"
    " UNION ALL SELECT pg_advisory_unlock($3, i) FROM unnest($4::int[]) i"
)
# Provider calls in flight: the slot locks held across every session of the namespace.
RUNNING_SLOTS = (
    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
    "AND classid::bigint = $1 AND objsubid = 2 "
    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)


def json_text(value: dict[str, Any] | None) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))


def outbox_values(message: Outgoing) -> tuple[str | None, ...]:
    return (
        message.exchange,
        message.routing_key,
        json_text(message.body),
        json_text(message.headers or None),
        message.message_id,
        message.correlation_id,
    )


def outbox_cte(messages: Sequence[Outgoing], args: list[Any]) -> list[str]:
    """The common table expression that queues ``messages`` if the statement's ``t``
    (the row it writes) is not empty; its values are appended to ``args``."""
    if not messages:
        return []
    arrays = []
    for column in zip(*(outbox_values(m) for m in messages), strict=True):
        args.append(list(column))
        arrays.append(f"${len(args)}::text[]")
    return [
        f"sent AS (INSERT INTO outbox ({OUTBOX_COLUMNS})"
        " SELECT e, r, b::jsonb, h::jsonb, m, c"
        f" FROM unnest({', '.join(arrays)}) AS o(e, r, b, h, m, c) WHERE EXISTS (SELECT 1 FROM t))"
    ]
