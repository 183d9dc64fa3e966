"""Submits whose answer was never recorded.

A submit is marked as started before the request goes out and unmarked once its outcome
is recorded. A marker still set when the image is taken up again means the process died
in between: the provider may have billed a task whose id nobody learned.

Revision ID: 0004
Revises: 0003
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "task_images", sa.Column("submit_started_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.add_column(
        "task_images",
        sa.Column("unrecorded_submits", sa.SmallInteger(), server_default="0", nullable=False),
    )


def downgrade() -> None:
    op.drop_column("task_images", "unrecorded_submits")
    op.drop_column("task_images", "submit_started_at")
