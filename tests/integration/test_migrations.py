"""Migrations round-trip on the real PostgreSQL and match the models exactly."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import create_async_engine
from structlog.testing import capture_logs

from services.config import Settings
from services.db.engine import Database, drop_database, ensure_database
from services.db.migrate import downgrade, migrate, upgrade
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


def _fresh(settings: Settings, suffix: str) -> str:
    url = make_url(settings.database_url)
    return url.set(database=f"{url.database}_{suffix}").render_as_string(hide_password=False)


def _scans(plan: dict[str, Any]) -> list[dict[str, Any]]:
    return [plan, *(scan for child in plan.get("Plans", []) for scan in _scans(child))]


async def test_upgrade_matches_models_then_downgrade_and_upgrade_again(settings: Settings) -> None:
    url = _fresh(settings, "mig")
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


async def test_a_compare_and_set_finds_its_task_by_id_on_a_table_never_analyzed(
    settings: Settings,
) -> None:
    # A new deployment's planner rated an index on status alone as good as the primary
    # key, and a prepared statement kept the plan: every write walked all tasks of a status.
    url = _fresh(settings, "plan")
    await ensure_database(url)
    db = Database(url)
    try:
        await upgrade(url)
        conn = await db.connect()
        try:
            await conn.execute("SET plan_cache_mode = force_generic_plan")
            await conn.execute(
                "PREPARE cas(text, text, int) AS UPDATE tasks SET version = version + 1"
                " WHERE id = $1 AND status = $2 AND version = $3"
            )
            plan = await conn.fetchval("EXPLAIN (FORMAT JSON) EXECUTE cas('t-1', 'PENDING', 1)")
        finally:
            await conn.close()
        conditions = [scan.get("Index Cond", "") for scan in _scans(plan[0]["Plan"])]
        assert any("(id)::text = $1" in c for c in conditions), conditions
    finally:
        await db.close()
        await drop_database(url)


async def test_migrating_brings_an_older_schema_up_and_leaves_a_newer_release_s_alone(
    settings: Settings,
) -> None:
    url = _fresh(settings, "newer")
    await ensure_database(url)
    try:
        assert await migrate(url), "from nothing to this release's schema"
        assert await _diff(url) == []
        db = Database(url)
        async with db.checkout() as conn:
            await conn.execute("UPDATE alembic_version SET version_num = 'next-release'")
        with capture_logs() as logs:
            assert not await migrate(url), "a revision this release does not know stays"
        async with db.checkout() as conn:
            assert await conn.fetchval("SELECT version_num FROM alembic_version") == "next-release"
        await db.close()
        newer = [e for e in logs if e.get("action") == "schema_newer"]
        assert newer and newer[0]["revision"] == "next-release"
    finally:
        await drop_database(url)
