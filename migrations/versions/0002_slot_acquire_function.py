"""Slot acquisition as a function: try slots one by one, lock at most one.

A set-returning query with ``LIMIT 1`` around ``pg_try_advisory_lock`` may evaluate the
lock function on more rows than it returns (seen with generic plans of prepared
statements), silently taking extra slots. A loop takes exactly one.

Revision ID: 0002
Revises: 0001
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
        CREATE FUNCTION imagegen_acquire(
            slot_class int, slots int, start_at int, held int[], image_class int, image int
        ) RETURNS int LANGUAGE plpgsql AS $$
        -- The slot taken; NULL when all are busy; -1 when another session holds the image
        -- (the slot is given back then). Nested IFs: SQL does not promise AND short-circuits.
        DECLARE
            candidate int;
        BEGIN
            FOR step IN 0 .. slots - 1 LOOP
                candidate := (start_at + step) % slots;
                IF candidate = ANY(held) THEN
                    CONTINUE;
                END IF;
                IF pg_try_advisory_lock(slot_class, candidate) THEN
                    IF pg_try_advisory_lock(image_class, image) THEN
                        RETURN candidate;
                    END IF;
                    PERFORM pg_advisory_unlock(slot_class, candidate);
                    RETURN -1;
                END IF;
            END LOOP;
            RETURN NULL;
        END $$
        """
    )


def downgrade() -> None:
    op.execute("DROP FUNCTION IF EXISTS imagegen_acquire(int, int, int, int[], int, int)")
