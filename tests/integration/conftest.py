"""Fixtures of the integration tier."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractRobustConnection
from pydantic import SecretStr

from services.config import Settings
from services.db.engine import Database
from services.db.locks import ProviderSlots
from services.provider.dashscope import DashScopeClient
from services.provider.simulator import RunningSimulator, SimConfig, running_simulator

KEY = "sk-contract-test-key"
"""The provider key the simulator of the provider tests expects."""


@pytest.fixture
async def connection(settings: Settings) -> AsyncIterator[AbstractRobustConnection]:
    """A broker connection of the test's own."""
    connection = await aio_pika.connect_robust(settings.amqp_url)
    yield connection
    await connection.close()


@pytest.fixture
async def dbs(database: str) -> AsyncIterator[list[Database]]:
    """Two handles on the test database, as two worker processes hold them."""
    dbs = [Database(database, size=2, overflow=2) for _ in range(2)]
    yield dbs
    for db in dbs:
        await db.close()


def keeper(db: Database, size: int) -> ProviderSlots:
    """A keeper of ``size`` slots in a namespace of its own, so no two tests share a limit."""
    return ProviderSlots(db, f"slots-{uuid.uuid4().hex[:8]}", size=size)


@pytest.fixture(scope="module")
async def simulator() -> AsyncIterator[RunningSimulator]:
    async with running_simulator(SimConfig(api_key=KEY)) as running:
        yield running


@pytest.fixture
async def sim(simulator: RunningSimulator) -> RunningSimulator:
    """The module's simulator, its faults and counters reset for each test."""
    simulator.sim.config = SimConfig(api_key=KEY)
    simulator.sim.reset()
    return simulator


def dashscope(sim: RunningSimulator, **kw: Any) -> DashScopeClient:
    """A client of ``sim`` that polls a hundred times faster than DashScope's rhythm."""
    options: dict[str, Any] = {"poll_schedule_scale": 0.01, "read_timeout_s": 5.0}
    options.update(kw)
    return DashScopeClient(
        sim.base_url, SecretStr(options.pop("key", KEY)), "wanx2.1-t2i-turbo", **options
    )
