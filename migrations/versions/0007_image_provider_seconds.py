"""How long each stored image spent inside provider calls.

What an image's end-to-end time owes to the provider, and what to the pipeline: an
operator's answer to "is it us or DashScope", and the benchmark's measure of the
pipeline's own overhead.

Revision ID: 0007
Revises: 0006
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("task_images", sa.Column("provider_seconds", sa.Float(), nullable=True))


def downgrade() -> None:
    op.drop_column("task_images", "provider_seconds")
