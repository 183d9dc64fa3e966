"""Migrations round-trip on the real PostgreSQL and match the models exactly."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import create_async_engine

from services.config import Settings
from services.db.engine import drop_database, ensure_database
from services.db.migrate import downgrade, upgrade
from services.db.models import Base


async def _diff(url: str) -> list[Any]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:

            def compare(sync: Connection) -> list[Any]:
                return list(compare_metadata(MigrationContext.configure(sync), Base.metadata))

            return await conn.run_sync(compare)
    finally:
        await engine.dispose()


async def _tables(url: str) -> set[str]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
    finally:
        await engine.dispose()


async def test_upgrade_matches_models_then_downgrade_and_upgrade_again(settings: Settings) -> None:
    url = make_url(settings.database_url)
    url = url.set(database=f"{url.database}_mig").render_as_string(hide_password=False)
    await ensure_database(url)
    try:
        await upgrade(url)
        assert await _diff(url) == []
        assert {"tasks", "task_images", "outbox"} <= await _tables(url)

        await downgrade(url, "base")
        assert await _tables(url) == {"alembic_version"}

        await upgrade(url)
        assert await _diff(url) == []
        engine = create_async_engine(url)
        async with engine.connect() as conn:
            trigger = await conn.scalar(
                text("SELECT count(*) FROM pg_trigger WHERE tgname = 'outbox_notify'")
            )
        await engine.dispose()
        assert trigger == 1
    finally:
        await drop_database(url)
