"""Fixtures of the integration tier."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aio_pika
import pytest
from aio_pika.abc import AbstractRobustConnection

from services.config import Settings


@pytest.fixture
async def connection(settings: Settings) -> AsyncIterator[AbstractRobustConnection]:
    """A broker connection of the test's own."""
    connection = await aio_pika.connect_robust(settings.amqp_url)
    yield connection
    await connection.close()
