"""Builds every I/O object once, starts the requested roles, and shuts down gracefully.

Roles: ``intake`` (task events in), ``worker`` (images), ``relay`` (outbox out, plus the
reconciler) and ``admin`` (HTTP). ``imagegen run`` starts them all in one process; a
deployment scales out by running roles in separate processes (workers especially).
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Callable, Collection, Coroutine
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from enum import StrEnum
from functools import partial
from typing import Any

from aio_pika.abc import AbstractRobustConnection
from pydantic import SecretStr

from services.broker.connection import connect
from services.broker.consumer import Consumer, Handler
from services.broker.publisher import Publisher
from services.broker.topology import Topology
from services.config import Settings
from services.db.engine import Database
from services.db.errors import DatabaseUnavailable
from services.db.locks import ProviderSlots
from services.db.migrate import check_schema
from services.db.pacing import SubmitPacer
from services.db.repository import Repository
from services.errors import ImagegenError
from services.events import Events
from services.intake.consumer import IntakeHandler
from services.logs import get_logger
from services.outbox.relay import Relay, outbox_database
from services.provider.dashscope import DashScopeClient
from services.provider.simulator import SimConfig, running_simulator
from services.worker.reconciler import Reconciler
from services.worker.worker import ImageWorker

log = get_logger("imagegen.runtime")
WARM_TIMEOUT_S = 10
INTAKE_PREFETCH = 32
BUILT_IN_SIMULATOR = SimConfig(latency_s=0.5)


class LoopFailed(ImagegenError):
    """A loop of the process stopped while the service was running."""


class Role(StrEnum):
    INTAKE = "intake"
    WORKER = "worker"
    RELAY = "relay"
    ADMIN = "admin"


ALL_ROLES = frozenset(Role)


@asynccontextmanager
async def provider_client(settings: Settings) -> AsyncIterator[DashScopeClient]:
    """The real DashScope client, or, with no API key, one wired to a built-in simulator."""
    options: dict[str, Any] = {
        "size": settings.image_size,
        "connect_timeout_s": settings.provider_connect_timeout_s,
        "read_timeout_s": settings.provider_read_timeout_s,
        "poll_timeout_s": settings.provider_poll_timeout_s,
        "poll_schedule_scale": settings.poll_schedule_scale,
        "query_rate_per_s": settings.provider_query_rate_per_s,
    }
    async with AsyncExitStack() as stack:
        if settings.dashscope_api_key is None:
            sim = await stack.enter_async_context(running_simulator(BUILT_IN_SIMULATOR))
            log.warning(
                "DASHSCOPE_API_KEY is not set: using the built-in provider simulator "
                f"at {sim.base_url} (no real images are generated or billed)",
                action="simulator",
            )
            client = DashScopeClient(
                sim.base_url, SecretStr(sim.sim.config.api_key), settings.dashscope_model, **options
            )
        else:
            client = DashScopeClient(
                settings.dashscope_base_url,
                settings.dashscope_api_key,
                settings.dashscope_model,
                **options,
            )
        stack.push_async_callback(client.aclose)
        yield client


@dataclass
class Wiring:
    """The I/O objects shared by the roles of one process."""

    settings: Settings
    repo: Repository
    topology: Topology
    events: Events
    connection: AbstractRobustConnection
    publisher: Publisher
    slots: ProviderSlots


async def _warm(opening: Coroutine[Any, Any, None]) -> None:
    """Open database connections before consuming; a database that is down now is waited
    for message by message (each is requeued), as after any later outage."""
    try:
        async with asyncio.timeout(WARM_TIMEOUT_S):
            await opening
    except (DatabaseUnavailable, TimeoutError) as exc:
        log.warning(
            "the database is not reachable yet; messages will wait for it",
            action="db_unavailable",
            error=str(exc) or exc.__class__.__name__,
        )


async def _ready(db: Database, connections: int) -> None:
    """Refuse a database without this release's schema, then open the pool."""
    await check_schema(db)
    await db.warm(connections)


@asynccontextmanager
async def wiring(settings: Settings) -> AsyncIterator[Wiring]:
    db = Database(settings.database_url, size=settings.db_pool_size, overflow=0)
    async with AsyncExitStack() as stack:
        stack.push_async_callback(db.close)
        connection = await connect(settings.amqp_url, "imagegen")
        stack.push_async_callback(connection.close)
        topology = Topology(settings.namespace, settings.retry_ttl_scale)
        setup = await connection.channel()
        await topology.declare(setup)
        await setup.close()
        publisher = Publisher(
            await connection.channel(publisher_confirms=True, on_return_raises=True)
        )
        slots = ProviderSlots(db, settings.namespace, settings.max_concurrent)
        stack.push_async_callback(slots.close)
        await _warm(_ready(db, settings.db_pool_size))
        yield Wiring(
            settings=settings,
            repo=Repository(db),
            topology=topology,
            events=Events(topology),
            connection=connection,
            publisher=publisher,
            slots=slots,
        )


async def run(
    settings: Settings,
    roles: Collection[Role] = ALL_ROLES,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[Wiring], None] | None = None,
) -> None:
    """Run ``roles`` until ``stop`` is set, then stop consuming, let in-flight messages
    finish (up to ``shutdown_grace_s``) and hand back the rest to the broker."""
    stop = stop or asyncio.Event()
    async with AsyncExitStack() as stack:
        wired = await stack.enter_async_context(wiring(settings))
        # Consumers and role loops start together once the process is ready (below).
        consumers: list[Consumer] = []
        starts: dict[str, Callable[[], Coroutine[Any, Any, None]]] = {}

        async def add_consumer(role: Role, queue: str, handler: Handler, prefetch: int) -> None:
            channel = await wired.connection.channel()
            consumers.append(
                Consumer(
                    role.value,
                    channel,
                    queue,
                    handler,
                    wired.publisher,
                    wired.topology,
                    prefetch,
                )
            )

        if Role.RELAY in roles:
            outbox = outbox_database(settings.database_url)
            stack.push_async_callback(outbox.close)
            relay = Relay(
                Repository(outbox),
                wired.publisher,
                settings.database_url,
                poll_interval_s=settings.outbox_poll_interval_s,
            )
            reconciler = Reconciler(
                wired.repo,
                wired.events,
                settings.namespace,
                settings.reconcile_interval_s,
                settings.reconcile_stale_after_s,
            )
            starts["relay"] = partial(relay.run, stop)
            starts["reconciler"] = partial(reconciler.run, stop)
        if Role.INTAKE in roles:
            handler = IntakeHandler(wired.repo, wired.events, wired.slots)
            await add_consumer(Role.INTAKE, wired.topology.intake_queue, handler, INTAKE_PREFETCH)
        if Role.WORKER in roles:
            client = await stack.enter_async_context(provider_client(settings))
            pacer = SubmitPacer(
                wired.repo.db, settings.namespace, settings.provider_submit_rate_per_s
            )
            await _warm(wired.slots.connect())
            worker = ImageWorker(settings, wired.repo, wired.slots, client, wired.events, pacer)
            await add_consumer(Role.WORKER, wired.topology.images_queue, worker, settings.prefetch)
        if Role.ADMIN in roles:
            from services.admin.server import serve_admin

            starts["admin"] = partial(serve_admin, wired, stop)

        # What is alive now lives as long as the process. Frozen, it is no longer walked by
        # each full collection, which otherwise stalls every message in flight (measured:
        # about 40 ms, the latency benchmark's p99 outliers). Collected and frozen before
        # any work comes in: the collection itself took 100-250 ms on a busy machine, and
        # held up the first messages when the consumers had started before it.
        gc.collect()
        gc.freeze()
        failures: list[LoopFailed] = []
        loops = [_supervised(name, start(), stop, failures) for name, start in starts.items()]
        for consumer in consumers:
            if not stop.is_set():  # a loop may already have failed (the admin port taken)
                await consumer.start()
        if not stop.is_set():
            log.info("service started", action="start", roles=sorted(r.value for r in roles))
            if on_ready is not None:
                on_ready(wired)
        await stop.wait()
        log.info("shutting down", action="stop")
        await asyncio.gather(*(c.stop(settings.shutdown_grace_s) for c in consumers))
        await asyncio.gather(*loops, return_exceptions=True)
    log.info("service stopped", action="stop")
    if failures:
        raise failures[0]


def _supervised(
    name: str,
    body: Coroutine[Any, Any, None],
    stop: asyncio.Event,
    failures: list[LoopFailed],
) -> asyncio.Task[None]:
    """Run a loop meant to last as long as the service; one that ends first stops the
    service. A process without its relay or its admin probe would look alive and do
    nothing, where one that exits is restarted by whatever runs it."""

    def ended(loop: asyncio.Task[None]) -> None:
        if stop.is_set():
            return
        error = None if loop.cancelled() else loop.exception()
        if error is not None:
            reason = str(error) or type(error).__name__
        else:
            reason = "it was cancelled" if loop.cancelled() else "it returned"
        log.error(
            f"the {name} loop stopped; shutting down",
            action="loop_failed",
            loop=name,
            error=reason,
            exc_info=error if not isinstance(error, ImagegenError) else None,
        )
        failures.append(LoopFailed(f"the {name} loop stopped: {reason}"))
        stop.set()

    loop = asyncio.create_task(body, name=name)
    loop.add_done_callback(ended)
    return loop
