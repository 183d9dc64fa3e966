"""Fixtures shared by every tier. Each test session gets its own database and its own
broker namespace, and removes both afterwards, so runs never see each other."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings
from sqlalchemy.engine import make_url

from services.config import Settings, load_settings
from services.db.engine import Database, drop_database, ensure_database
from services.db.migrate import upgrade
from services.db.repository import Repository
from tests.services import ServiceUrls, service_urls

TIERS = ("unit", "integration", "e2e")

# Property tests check what a function returns, not how fast: on two cores shared with the
# session's services and servers, one example slowed past hypothesis's 200 ms deadline
# failed a pure function's test.
hypothesis_settings.register_profile("suite", deadline=None)
hypothesis_settings.load_profile("suite")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        tier = Path(str(item.fspath)).parent.name
        if tier in ("integration", "e2e"):
            item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(scope="session")
def run_id() -> str:
    return uuid.uuid4().hex[:8]


@pytest.fixture(scope="session")
def urls() -> Iterator[ServiceUrls]:
    with service_urls() as found:
        yield found


@pytest.fixture(scope="session")
def settings(urls: ServiceUrls, run_id: str) -> Settings:
    database_url = (
        make_url(urls.database_url)
        .set(database=f"imagegen_test_{run_id}")
        .render_as_string(hide_password=False)
    )
    return load_settings(
        database_url=database_url,
        amqp_url=urls.amqp_url,
        namespace=f"test-{run_id}",
        retry_ttl_scale=0.005,
        provider_submit_rate_per_s=0,
        poll_schedule_scale=0.02,
        outbox_poll_interval_s=0.2,
        reconcile_interval_s=0.5,
        shutdown_grace_s=5,
        dashscope_api_key=None,
    )


@pytest.fixture(scope="session")
async def database(settings: Settings) -> AsyncIterator[str]:
    await ensure_database(settings.database_url)
    await upgrade(settings.database_url)
    yield settings.database_url
    await drop_database(settings.database_url)


@pytest.fixture(scope="session")
async def db(database: str) -> AsyncIterator[Database]:
    db = Database(database)
    yield db
    await db.close()


@pytest.fixture(scope="session")
def repo(db: Database) -> Repository:
    return Repository(db)
