"""Slots for several images in one call, so the acquires queued behind the keeper's
current call share its next round trip.

Each image goes through ``imagegen_acquire`` with the slots taken so far counted as held:
session advisory locks are re-entrant, and without that the keeper could take one slot
twice. Once every slot is taken the rest get NULL without trying.

Revision ID: 0005
Revises: 0004
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
        CREATE FUNCTION imagegen_acquire_many(
            slot_class int, slots int, start_at int, held int[], image_class int, images int[]
        ) RETURNS int[] LANGUAGE plpgsql AS $$
        -- One result per image, as imagegen_acquire's: the slot, NULL or -1.
        DECLARE
            taken int[] := held;
            results int[] := '{}';
            image int;
            slot int;
            exhausted boolean := false;
        BEGIN
            FOREACH image IN ARRAY images LOOP
                slot := NULL;
                IF NOT exhausted THEN
                    slot := imagegen_acquire(
                        slot_class, slots, start_at, taken, image_class, image
                    );
                    IF slot IS NULL THEN
                        exhausted := true;
                    ELSIF slot >= 0 THEN
                        taken := taken || slot;
                        start_at := slot + 1;
                    END IF;
                END IF;
                results := results || slot;
            END LOOP;
            RETURN results;
        END $$
        """
    )


def downgrade() -> None:
    op.execute("DROP FUNCTION IF EXISTS imagegen_acquire_many(int, int, int, int[], int, int[])")
