"""The whole service in this process, against real PostgreSQL and RabbitMQ and the
simulator over HTTP; a subscriber records every status event it publishes."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractRobustConnection, DeliveryMode

from services.broker.topology import Topology
from services.config import Settings, load_settings
from services.db.repository import Repository
from services.provider.simulator import RunningSimulator, SimConfig, running_simulator
from services.runtime import Role, Wiring, run

SIM_KEY = "sk-e2e-simulator-key"
FINAL = ("task.status.images_ready", "task.status.failed", "task.status.cancelled")


def unique(prompt: str) -> str:
    """``prompt`` made unique, so the simulator's counts by prompt are the test's own."""
    return f"{prompt} #{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
async def sim() -> AsyncIterator[RunningSimulator]:
    async with running_simulator(SimConfig(api_key=SIM_KEY)) as running:
        yield running


@pytest.fixture(autouse=True)
def fresh_simulator(sim: RunningSimulator) -> None:
    sim.sim.configure(SimConfig(api_key=SIM_KEY).model_dump())
    sim.sim.reset_counters()


def with_simulator(settings: Settings, sim: RunningSimulator, **overrides: Any) -> Settings:
    values = settings.model_dump()
    values.update(
        dashscope_api_key=SIM_KEY, dashscope_base_url=sim.base_url, admin_token=None, **overrides
    )
    return load_settings(**values)


@pytest.fixture(scope="session")
def e2e_settings(settings: Settings, sim: RunningSimulator) -> Settings:
    return with_simulator(settings, sim)


class Bus:
    """Publishes like a producer service and records status events like a subscriber."""

    def __init__(self, channel: AbstractChannel, topology: Topology) -> None:
        self.channel = channel
        self.topology = topology
        self.events: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.changed = asyncio.Event()

    async def publish(
        self, routing_key: str, body: dict[str, Any] | bytes, **properties: Any
    ) -> str:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        message_id = properties.pop("message_id", str(uuid.uuid4()))
        exchange = await self.channel.get_exchange(self.topology.tasks_exchange)
        await exchange.publish(
            aio_pika.Message(
                raw,
                content_type="application/json",
                delivery_mode=DeliveryMode.PERSISTENT,
                message_id=message_id,
                **properties,
            ),
            routing_key=routing_key,
        )
        return message_id

    async def create(self, prompt: str, image_count: int = 4, **extra: Any) -> str:
        task_id = extra.pop("task_id", f"e2e-{uuid.uuid4().hex[:12]}")
        body = {
            "task_id": task_id,
            "user_id": "u-e2e",
            "prompt": prompt,
            "image_count": image_count,
        }
        await self.publish("task.created", body | extra)
        return task_id

    def record(self, event: dict[str, Any]) -> None:
        self.events[str(event.get("task_id"))].append(event)
        self.changed.set()

    async def wait_for(
        self, task_id: str, event_type: str | tuple[str, ...], timeout: float = 20
    ) -> dict[str, Any]:
        types = (event_type,) if isinstance(event_type, str) else event_type
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events[task_id]:
                if event["event_type"] in types:
                    return event
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                seen = [e["event_type"] for e in self.events[task_id]]
                raise AssertionError(f"no {types} for {task_id} within {timeout} s; saw {seen}")
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), min(remaining, 0.5))
            except TimeoutError:
                pass

    async def final(self, task_id: str, timeout: float = 20) -> dict[str, Any]:
        return await self.wait_for(task_id, FINAL, timeout)

    def types(self, task_id: str) -> list[str]:
        return [
            e["event_type"] for e in sorted(self.events[task_id], key=lambda e: e["version"] or 0)
        ]


async def start_bus(connection: AbstractRobustConnection, topology: Topology) -> Bus:
    channel = await connection.channel()
    bus = Bus(channel, topology)
    status = await channel.declare_exchange(
        topology.status_exchange, aio_pika.ExchangeType.TOPIC, durable=True
    )
    queue = await channel.declare_queue(exclusive=True, auto_delete=True)
    await queue.bind(status, routing_key="#")

    async def on_event(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        async with message.process():
            event = json.loads(message.body)
            event["_correlation_id"] = message.correlation_id
            event["_message_id"] = message.message_id
            bus.record(event)

    await queue.consume(on_event)
    return bus


@pytest.fixture(scope="session")
async def service(e2e_settings: Settings, database: str) -> AsyncIterator[Wiring]:
    """The service (intake, worker, relay) running for the whole session."""
    stop = asyncio.Event()
    ready: asyncio.Future[Wiring] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        run(e2e_settings, [Role.INTAKE, Role.WORKER, Role.RELAY], stop, ready.set_result)
    )
    done, _ = await asyncio.wait([task, ready], timeout=30, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        task.result()
    wired = ready.result()
    yield wired
    stop.set()
    await asyncio.wait_for(task, 30)
    connection = await aio_pika.connect_robust(e2e_settings.amqp_url)
    async with connection:
        await Topology(e2e_settings.namespace).delete(await connection.channel())


@pytest.fixture(scope="session")
async def bus(service: Wiring) -> AsyncIterator[Bus]:
    connection = await aio_pika.connect_robust(service.settings.amqp_url)
    bus = await start_bus(connection, service.topology)
    yield bus
    await connection.close()


@pytest.fixture(scope="session")
def service_repo(service: Wiring) -> Repository:
    return service.repo
