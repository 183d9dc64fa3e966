"""The status index also holds the task id.

Every compare-and-set on a task filters on its id and its status. On a table that is
small or not yet analyzed (a new deployment, or a backlog that grew since the last
ANALYZE), the planner rates an index on status alone as good as the primary key and may
take it, and a prepared statement keeps that plan: each write then walked every task of
that status (about 70 index entries per image in the throughput benchmark, and a whole
backlog for a task's start). With the id in the index, either index finds the one row.

Revision ID: 0006
Revises: 0005
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_tasks_status_id", "tasks", ["status", "id"])
    op.drop_index("ix_tasks_status", table_name="tasks")


def downgrade() -> None:
    op.create_index("ix_tasks_status", "tasks", ["status"])
    op.drop_index("ix_tasks_status_id", table_name="tasks")
