"""Alembic, driven from code: the CLI's ``migrate`` and the tests use these, and every
role checks the database's schema with ``check_schema`` before it serves."""

from __future__ import annotations

import asyncio
from importlib.resources import files

import asyncpg
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

from services.db.engine import Database
from services.db.errors import RepositoryError
from services.logs import get_logger

log = get_logger("imagegen.migrate")
CURRENT_REVISION = "SELECT version_num FROM alembic_version"
HAS_REVISION = "SELECT to_regclass('alembic_version') IS NOT NULL"


class NotMigrated(RepositoryError):
    """The database lacks the schema this release's statements need: run ``imagegen
    migrate`` (``imagegen run`` does it by itself)."""


def alembic_config(database_url: str) -> Config:
    """Alembic pointed at the ``migrations`` package, wherever it is installed."""
    config = Config()
    config.set_main_option("script_location", str(files("migrations")))
    config.set_main_option("sqlalchemy.url", database_url)
    return config


def revisions() -> list[str]:
    """This release's schema revisions, the newest first."""
    script = ScriptDirectory.from_config(alembic_config(""))
    return [revision.revision for revision in script.walk_revisions()]


def _upgrade(database_url: str, revision: str) -> None:
    command.upgrade(alembic_config(database_url), revision)


def _downgrade(database_url: str, revision: str) -> None:
    command.downgrade(alembic_config(database_url), revision)


async def upgrade(database_url: str, revision: str = "head") -> None:
    # env.py runs its own event loop, so Alembic gets a thread of its own.
    await asyncio.to_thread(_upgrade, database_url, revision)


async def downgrade(database_url: str, revision: str = "base") -> None:
    await asyncio.to_thread(_downgrade, database_url, revision)


async def _revision(db: Database) -> str | None:
    """The revision Alembic recorded in the database; None before its first migration."""
    try:
        async with db.checkout() as conn:
            if not await conn.fetchval(HAS_REVISION):
                return None
            revision: str | None = await conn.fetchval(CURRENT_REVISION)
            return revision
    except RepositoryError as exc:
        if isinstance(exc.__cause__, asyncpg.InvalidCatalogNameError):
            raise NotMigrated(f"{exc}: run `imagegen migrate`, which creates it") from exc
        raise


def _newer(current: str | None, ours: list[str]) -> bool:
    """Whether ``current`` is a revision this release does not know (the next release's,
    migrated while this one still runs, as in a rolling upgrade); logged when it is."""
    if current is None or current in ours:
        return False
    log.warning(
        "the database's schema is newer than this release's",
        action="schema_newer",
        revision=current,
        ours=ours[0],
    )
    return True


async def migrate(database_url: str) -> bool:
    """Bring the database (which must exist) to this release's schema. False, leaving it
    as it is, when a newer release has migrated it already: Alembic would refuse a
    revision it cannot find, and this release's processes serve it as it is."""
    db = Database(database_url, size=1, overflow=0)
    try:
        current = await _revision(db)
    finally:
        await db.close()
    if _newer(current, revisions()):
        return False
    await upgrade(database_url)
    return True


async def check_schema(db: Database) -> None:
    """Raise ``NotMigrated`` when the database is missing or its schema is older than this
    release's: a role that served it anyway would fail on its first statement, and the
    intake would park every task it was sent as an internal error. A newer schema is
    served (``_newer``). ``DatabaseUnavailable`` when it cannot be read now."""
    ours = revisions()
    current = await _revision(db)
    if current == ours[0] or _newer(current, ours):
        return
    raise NotMigrated(
        f"the database's schema is at revision {current or 'none'}, and this release"
        f" needs {ours[0]}: run `imagegen migrate` first"
    )
