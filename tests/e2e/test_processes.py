"""Separate worker processes: the global concurrency limit holds across them, a worker
killed between submit and store costs no second submit, and purged work is recovered."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import aio_pika
import pytest
from sqlalchemy.engine import make_url

from services.broker.dead import DeadMessage, peek
from services.broker.topology import Topology, queue_counts
from services.config import Settings
from services.db.engine import drop_database, ensure_database
from services.db.migrate import upgrade
from services.db.repository import Repository
from services.provider.simulator import RunningSimulator
from services.runtime import Role, Wiring, run
from services.worker.reconciler import Reconciler
from statemachine import TaskStatus
from tests.e2e.conftest import SIM_KEY, Bus, start_bus, unique, with_simulator


@dataclass
class Cluster:
    settings: Settings
    wired: Wiring
    bus: Bus
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def env(self, **extra: str) -> dict[str, str]:
        s = self.settings
        return (
            os.environ
            | extra
            | {
                "IMAGEGEN_DATABASE_URL": s.database_url,
                "IMAGEGEN_AMQP_URL": s.amqp_url,
                "IMAGEGEN_NAMESPACE": s.namespace,
                "IMAGEGEN_MAX_CONCURRENT": str(s.max_concurrent),
                "IMAGEGEN_RETRY_TTL_SCALE": str(s.retry_ttl_scale),
                "IMAGEGEN_POLL_SCHEDULE_SCALE": str(s.poll_schedule_scale),
                "IMAGEGEN_PROVIDER_SUBMIT_RATE_PER_S": extra.get(
                    "IMAGEGEN_PROVIDER_SUBMIT_RATE_PER_S", str(s.provider_submit_rate_per_s)
                ),
                "IMAGEGEN_LOG_FORMAT": "json",
                "DASHSCOPE_API_KEY": SIM_KEY,
                "DASHSCOPE_BASE_URL": s.dashscope_base_url,
            }
        )

    async def start_worker(self, **extra_env: str) -> subprocess.Popen[bytes]:
        before = await self.consumers()
        worker = subprocess.Popen(
            [sys.executable, "-m", "services", "worker"],
            env=self.env(**extra_env),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.workers.append(worker)
        for _ in range(200):
            if await self.consumers() > before:
                return worker
            assert worker.poll() is None, "the worker exited during start"
            await asyncio.sleep(0.05)
        raise AssertionError("the worker never started consuming")

    async def consumers(self) -> int:
        channel = await self.wired.connection.channel()
        try:
            return (await queue_counts(channel, self.wired.topology.images_queue)).consumers
        finally:
            await channel.close()

    def stop_workers(self) -> None:
        for worker in self.workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        for worker in self.workers:
            try:
                worker.wait(15)
            except subprocess.TimeoutExpired:
                worker.kill()
        self.workers.clear()


@pytest.fixture(scope="module")
async def cluster(settings: Settings, sim: RunningSimulator) -> AsyncIterator[Cluster]:
    """Intake and relay in this process, on a database and namespace of their own."""
    url = make_url(settings.database_url)
    own = with_simulator(
        settings,
        sim,
        database_url=url.set(database=f"{url.database}_proc").render_as_string(hide_password=False),
        namespace=f"{settings.namespace}-proc",
        max_concurrent=2,
    )
    await ensure_database(own.database_url)
    await upgrade(own.database_url)
    stop = asyncio.Event()
    ready: asyncio.Future[Wiring] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(run(own, [Role.INTAKE, Role.RELAY], stop, ready.set_result))
    wired = await asyncio.wait_for(ready, 30)
    connection = await aio_pika.connect_robust(own.amqp_url)
    cluster = Cluster(own, wired, await start_bus(connection, wired.topology))
    yield cluster
    cluster.stop_workers()
    await connection.close()
    stop.set()
    await asyncio.wait_for(task, 30)
    async with await aio_pika.connect_robust(own.amqp_url) as cleanup:
        await Topology(own.namespace).delete(await cleanup.channel())
    await drop_database(own.database_url)


@pytest.fixture
def workers_stopped(cluster: Cluster) -> Iterator[None]:
    yield
    cluster.stop_workers()


async def test_two_worker_processes_never_exceed_the_global_limit(
    cluster: Cluster, sim: RunningSimulator, workers_stopped: None
) -> None:
    sim.sim.configure({"latency_s": 0.3})
    await cluster.start_worker()
    await cluster.start_worker()
    prompt = unique("concurrency")
    tasks = [await cluster.bus.create(prompt) for _ in range(3)]
    for task_id in tasks:
        assert (await cluster.bus.final(task_id, timeout=60))["status"] == "IMAGES_READY"

    assert cluster.settings.max_concurrent == 2
    assert sim.sim.stats.peak_running == 2, "the limit was reached, and never passed"
    assert sim.sim.stats.billed_by_prompt[prompt] == 12


async def test_a_worker_killed_between_submit_and_store_costs_no_second_submit(
    cluster: Cluster, sim: RunningSimulator, workers_stopped: None
) -> None:
    sim.sim.configure({"latency_s": 2.0})
    victim = await cluster.start_worker()
    prompt = unique("crash")
    task_id = await cluster.bus.create(prompt, image_count=1)
    repo: Repository = cluster.wired.repo
    for _ in range(200):
        found = await repo.get_task(task_id)
        if found and found[1][0].provider_task_id:
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("the worker never stored a provider task id")
    assert sim.sim.stats.submits_by_prompt[prompt] == 1

    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    await cluster.start_worker()
    ready = await cluster.bus.final(task_id, timeout=60)

    assert ready["status"] == "IMAGES_READY"
    assert sim.sim.stats.submits_by_prompt[prompt] == 1, (
        "the restarted worker polled, not paid again"
    )
    assert sim.sim.stats.billed_by_prompt[prompt] == 1


async def test_a_worker_killed_before_the_submit_answer_is_recorded_reports_the_doubt(
    cluster: Cluster, sim: RunningSimulator, workers_stopped: None
) -> None:
    # The provider has the task (and will bill it) while its answer is still on the way.
    sim.sim.configure({"latency_s": 0.0, "answer_delay_s": 3.0})
    victim = await cluster.start_worker()
    prompt = unique("unrecorded")
    task_id = await cluster.bus.create(prompt, image_count=1)
    for _ in range(200):
        if sim.sim.stats.submits_by_prompt[prompt]:
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("the worker never submitted")
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    sim.sim.configure({"answer_delay_s": 0.0})
    await cluster.start_worker()
    ready = await cluster.bus.final(task_id, timeout=60)

    assert ready["status"] == "IMAGES_READY"
    assert sim.sim.stats.billed_by_prompt[prompt] == 2, "no idempotency key: paid twice"
    found = await cluster.wired.repo.get_task(task_id)
    assert found is not None
    image = found[1][0]
    assert (image.unrecorded_submits, image.submit_started_at) == (1, None), (
        "the second attempt counted the first one's unrecorded submit, and recorded its own"
    )


async def test_purged_image_messages_are_dispatched_again_by_the_reconciler(
    cluster: Cluster, sim: RunningSimulator, workers_stopped: None
) -> None:
    prompt = unique("purged")
    task_id = await cluster.bus.create(prompt, image_count=2)
    await cluster.bus.wait_for(task_id, "task.status.pending")
    channel = await cluster.wired.connection.channel()
    queue = await channel.get_queue(cluster.wired.topology.images_queue)
    for _ in range(100):  # the relay publishes the image messages right after the event
        if (await queue_counts(channel, queue.name)).messages == 2:
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("the image messages never reached the queue")
    await queue.purge()
    await channel.close()

    reconciler = Reconciler(
        cluster.wired.repo, cluster.wired.events, cluster.settings.namespace, 1, stale_after_s=0.01
    )
    await asyncio.sleep(0.05)
    assert await reconciler.run_once() == 2
    await cluster.start_worker()

    assert (await cluster.bus.final(task_id, timeout=60))["status"] == "IMAGES_READY"
    assert sim.sim.stats.submits_by_prompt[prompt] == 2


async def _parked(cluster: Cluster, task_id: str) -> list[DeadMessage]:
    channel = await cluster.wired.connection.channel()
    try:
        found = await peek(channel, cluster.wired.topology, limit=1000)
    finally:
        await channel.close()
    return [m for m in found if m.task_id == task_id]


async def _wait_parked(cluster: Cluster, task_id: str, count: int) -> list[DeadMessage]:
    for _ in range(400):
        if len(parked := await _parked(cluster, task_id)) >= count:
            return parked
        await asyncio.sleep(0.05)
    raise AssertionError(f"{task_id} has {len(parked)} parked messages, not {count}")


async def test_an_image_parked_for_an_internal_error_is_sent_again_and_finishes_once_fixed(
    cluster: Cluster, sim: RunningSimulator, workers_stopped: None
) -> None:
    # The database refuses this task's store, as a bug would: nothing the worker knows how
    # to retry, so the message is parked, and the reconciler sends the image again later.
    task_id = f"e2e-{uuid.uuid4().hex[:12]}"
    trigger = f"refuse_{uuid.uuid4().hex[:8]}"
    repo: Repository = cluster.wired.repo
    async with repo.autocommit() as tx:
        await tx.conn.execute(
            f"CREATE FUNCTION {trigger}() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN RAISE EXCEPTION 'store refused by the test'; END $$;"
            f" CREATE TRIGGER {trigger} BEFORE UPDATE ON task_images FOR EACH ROW"
            f" WHEN (NEW.url IS NOT NULL AND NEW.task_id = '{task_id}')"
            f" EXECUTE FUNCTION {trigger}()"
        )
    try:
        await cluster.start_worker()
        prompt = unique("refused store")
        await cluster.bus.create(prompt, image_count=1, task_id=task_id)
        reconciler = Reconciler(
            repo, cluster.wired.events, cluster.settings.namespace, 1, stale_after_s=0.01
        )

        [first] = await _wait_parked(cluster, task_id, 1)
        assert first.reason.startswith("internal error") and "store refused" in first.reason
        await asyncio.sleep(0.05)
        assert await reconciler.run_once() >= 1
        await _wait_parked(cluster, task_id, 2)  # still failing: parked again
        found = await repo.get_task(task_id)
        assert found is not None and found[0].status is TaskStatus.GENERATING_IMAGES
    finally:
        async with repo.autocommit() as tx:
            await tx.conn.execute(f"DROP FUNCTION {trigger}() CASCADE")

    await asyncio.sleep(0.05)
    assert await reconciler.run_once() >= 1
    assert (await cluster.bus.final(task_id, timeout=60))["status"] == "IMAGES_READY"
    assert sim.sim.stats.submits_by_prompt[prompt] == 1, "each copy polled the paid task"
    assert sim.sim.stats.billed_by_prompt[prompt] == 1


async def test_two_workers_together_keep_the_configured_submit_pace(
    cluster: Cluster, sim: RunningSimulator, workers_stopped: None
) -> None:
    # The provider allows 5 submits/s with no burst at all; the workers, between them, keep
    # to 4/s (some headroom absorbs the jitter of timers and HTTP).
    sim.sim.configure({"rate_per_s": 5, "burst": 1, "latency_s": 0.05})
    pace = {"IMAGEGEN_PROVIDER_SUBMIT_RATE_PER_S": "4"}
    await cluster.start_worker(**pace)
    await cluster.start_worker(**pace)
    prompt = unique("paced")
    started = asyncio.get_running_loop().time()
    tasks = [await cluster.bus.create(prompt) for _ in range(3)]
    for task_id in tasks:
        assert (await cluster.bus.final(task_id, timeout=60))["status"] == "IMAGES_READY"

    assert sim.sim.stats.throttled == 0, "paced submits never hit the provider's limit"
    assert sim.sim.stats.submits_by_prompt[prompt] == 12
    assert asyncio.get_running_loop().time() - started >= 11 / 4 - 0.2
