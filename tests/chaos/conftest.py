"""Chaos runs get a simulator of their own (its counters prove what was billed)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from services.config import Settings
from services.provider.simulator import RunningSimulator, SimConfig, running_simulator
from tests.chaos.harness import PROVIDER_KEY, Chaos


@pytest.fixture
async def sim() -> AsyncIterator[RunningSimulator]:
    async with running_simulator(SimConfig(api_key=PROVIDER_KEY, latency_s=0.05)) as running:
        yield running


@pytest.fixture
async def chaos(
    settings: Settings, sim: RunningSimulator, request: pytest.FixtureRequest
) -> AsyncIterator[Chaos]:
    run = await Chaos.open(settings, sim, request.node.name[5:25].replace("_", "-"))
    yield run
    await run.close()
