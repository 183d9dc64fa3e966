"""Original: the seed pipeline's algorithm, ported faithfully to asyncio.

An in-process queue admits a task when fewer than MAX_CONCURRENT run (polling every
500 ms), processes it, and always frees the slot. Processing counts the images already
stored and generates the rest one after another (submit, then poll at the SDK's rhythm),
storing each as it arrives. A retryable error frees the slot, waits 2/4/8 s (30/60/120 s
after a 429) and queues the task again; after 3 retries, or on a non-retryable error, the
task fails. Messages are acknowledged on arrival: the queue lives in memory, as it did.

It reads ``task.created`` bodies from its own queue and publishes one final event per task
so the benchmark can time it. Run: python -m bench.baselines.original (settings from env).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from typing import Any

import aio_pika
import asyncpg
from aio_pika.abc import DeliveryMode
from pydantic import SecretStr
from sqlalchemy.engine import make_url

from services.aio import run
from services.provider.dashscope import DashScopeClient, ProviderTaskStatus
from services.provider.errors import ProviderError, ProviderTaskFailed
from statemachine import classify, retry_delay_s

SCHEMA = """
CREATE TABLE IF NOT EXISTS orig_tasks (
    id text PRIMARY KEY, prompt text NOT NULL, image_count int NOT NULL, status text NOT NULL,
    started_at timestamptz, completed_at timestamptz, failed_at timestamptz, error text);
CREATE TABLE IF NOT EXISTS orig_images (
    id bigserial PRIMARY KEY, task_id text NOT NULL, idx int NOT NULL, url text NOT NULL);
"""
MAX_CONCURRENT = int(os.environ.get("IMAGEGEN_MAX_CONCURRENT", "3"))
MAX_RETRIES = int(os.environ.get("IMAGEGEN_MAX_RETRIES", "3"))
DELAY_SCALE = float(os.environ.get("IMAGEGEN_RETRY_TTL_SCALE", "1"))
ADMISSION_POLL_S = 0.5


def queue_name(namespace: str) -> str:
    return f"{namespace}.original.tasks"


class OriginalQueue:
    def __init__(self, pool: asyncpg.Pool, client: DashScopeClient, status: Any) -> None:
        self.pool = pool
        self.client = client
        self.status = status
        self.running = 0

    async def add(self, task: dict[str, Any], retry: int = 0) -> None:
        while self.running >= MAX_CONCURRENT:  # noqa: ASYNC110 - the seed polled, on purpose
            await asyncio.sleep(ADMISSION_POLL_S)
        self.running += 1
        try:
            delay = await self.process(task, retry)
        finally:
            self.running -= 1
        if delay is not None:
            await asyncio.sleep(delay)
            await self.add(task, retry + 1)

    async def process(self, task: dict[str, Any], retry: int) -> float | None:
        """Returns the delay before a retry, or None when the task is finished."""
        task_id, prompt, count = task["task_id"], task["prompt"], task["image_count"]
        try:
            async with self.pool.acquire() as conn:
                await conn.execute(
                    "UPDATE orig_tasks SET status = 'GENERATING_IMAGES', "
                    "started_at = coalesce(started_at, now()) WHERE id = $1",
                    task_id,
                )
                stored = await conn.fetchval(
                    "SELECT count(*) FROM orig_images WHERE task_id = $1", task_id
                )
            for index in range(stored, count):
                submitted = await self.client.submit(prompt, n=1)
                result = await self.client.wait(submitted.task_id)
                if result.status is not ProviderTaskStatus.SUCCEEDED or not result.urls:
                    raise ProviderTaskFailed(result.code, result.message or result.status.value)
                async with self.pool.acquire() as conn:
                    await conn.execute(
                        "INSERT INTO orig_images (task_id, idx, url) VALUES ($1, $2, $3)",
                        task_id,
                        index,
                        result.urls[0],
                    )
            async with self.pool.acquire() as conn:
                await conn.execute(
                    "UPDATE orig_tasks SET status = 'IMAGES_READY', completed_at = now() "
                    "WHERE id = $1",
                    task_id,
                )
            await self.finish(task_id, "task.status.images_ready")
            return None
        except ProviderError as exc:
            kind = classify(exc.failure)
            if kind.retryable and retry < MAX_RETRIES:
                return retry_delay_s(kind, retry) * DELAY_SCALE
            async with self.pool.acquire() as conn:
                await conn.execute(
                    "UPDATE orig_tasks SET status = 'FAILED', failed_at = now(), error = $2 "
                    "WHERE id = $1",
                    task_id,
                    str(exc),
                )
            await self.finish(task_id, "task.status.failed")
            return None

    async def finish(self, task_id: str, event_type: str) -> None:
        body = json.dumps({"event_type": event_type, "task_id": task_id}).encode()
        await self.status.publish(
            aio_pika.Message(body, delivery_mode=DeliveryMode.PERSISTENT), routing_key=event_type
        )


async def main() -> None:
    namespace = os.environ["IMAGEGEN_NAMESPACE"]
    url = make_url(os.environ["IMAGEGEN_DATABASE_URL"]).set(drivername="postgresql")
    pool = await asyncpg.create_pool(
        url.render_as_string(hide_password=False), min_size=2, max_size=10
    )
    async with pool.acquire() as conn:
        await conn.execute(SCHEMA)
    client = DashScopeClient(
        os.environ["DASHSCOPE_BASE_URL"],
        SecretStr(os.environ["DASHSCOPE_API_KEY"]),
        "wanx2.1-t2i-turbo",
        poll_schedule_scale=float(os.environ.get("IMAGEGEN_POLL_SCHEDULE_SCALE", "1")),
        query_rate_per_s=0,
    )
    connection = await aio_pika.connect_robust(os.environ["IMAGEGEN_AMQP_URL"])
    channel = await connection.channel(publisher_confirms=True)
    status = await channel.get_exchange(f"{namespace}.status")
    queue = await channel.declare_queue(queue_name(namespace), durable=True)
    original = OriginalQueue(pool, client, status)
    background: set[asyncio.Task[None]] = set()

    async def handle(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        task = json.loads(message.body)
        async with pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO orig_tasks (id, prompt, image_count, status) "
                "VALUES ($1, $2, $3, 'PENDING') ON CONFLICT DO NOTHING",
                task["task_id"],
                task["prompt"],
                task["image_count"],
            )
        await message.ack()  # from here on the task lives only in memory, as it did
        job = asyncio.create_task(original.add(task))
        background.add(job)
        job.add_done_callback(background.discard)

    await queue.consume(handle)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await connection.close()
    await client.aclose()
    await pool.close()


if __name__ == "__main__":
    run(main())
