"""Provider slots for tests."""

from __future__ import annotations

import uuid

from services.db.engine import Database
from services.db.locks import ProviderSlots


def keeper(db: Database, size: int) -> ProviderSlots:
    """A keeper of ``size`` slots in a namespace of its own, so no two tests share a limit."""
    return ProviderSlots(db, f"slots-{uuid.uuid4().hex[:8]}", size=size)
