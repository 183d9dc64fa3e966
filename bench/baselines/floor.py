"""Floor: the least work an image can cost here. Per message: one PostgreSQL transaction
(insert the image, bump the task's counter), one confirmed event, one ack. No provider, no
state machine, no outbox. Run: python -m bench.baselines.floor (settings from the env)."""

from __future__ import annotations

import asyncio
import json
import os
import signal

import aio_pika
import asyncpg
from aio_pika.abc import DeliveryMode
from sqlalchemy.engine import make_url

from services.aio import run
from services.broker.connection import connect

EVENT = "floor.image.ready"
SCHEMA = """
CREATE TABLE IF NOT EXISTS floor_tasks (id text PRIMARY KEY, stored int NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS floor_images (
    id bigserial PRIMARY KEY, task_id text NOT NULL, idx int NOT NULL, url text NOT NULL,
    UNIQUE (task_id, idx));
"""


def queue_name(namespace: str) -> str:
    return f"{namespace}.floor.images"


async def main() -> None:
    namespace = os.environ["IMAGEGEN_NAMESPACE"]
    url = make_url(os.environ["IMAGEGEN_DATABASE_URL"]).set(drivername="postgresql")
    pool = await asyncpg.create_pool(
        url.render_as_string(hide_password=False), min_size=4, max_size=16
    )
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock(42)")
        await conn.execute(SCHEMA)
        await conn.execute("SELECT pg_advisory_unlock(42)")
    # The service's own connection: both sides write the broker socket the same way.
    connection = await connect(os.environ["IMAGEGEN_AMQP_URL"], "floor")
    consume = await connection.channel()
    await consume.set_qos(prefetch_count=64)
    publish = await connection.channel(publisher_confirms=True, on_return_raises=True)
    status = await publish.get_exchange(f"{namespace}.status")
    queue = await consume.declare_queue(queue_name(namespace), durable=True)

    async def handle(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        body = json.loads(message.body)
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO floor_images (task_id, idx, url) VALUES ($1, $2, $3)",
                body["task_id"],
                body["index"],
                f"https://example/{body['task_id']}/{body['index']}",
            )
            stored = await conn.fetchval(
                "INSERT INTO floor_tasks (id, stored) VALUES ($1, 1) ON CONFLICT (id) "
                "DO UPDATE SET stored = floor_tasks.stored + 1 RETURNING stored",
                body["task_id"],
            )
        # "final" on a task's last image: the latency scenario times tasks by it.
        final = stored == body["image_count"]
        event = {"event_type": EVENT, "task_id": body["task_id"], "stored": stored, "final": final}
        await status.publish(
            aio_pika.Message(json.dumps(event).encode(), delivery_mode=DeliveryMode.PERSISTENT),
            routing_key=EVENT,
            mandatory=True,
        )
        await message.ack()

    await queue.consume(handle)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await connection.close()
    await pool.close()


if __name__ == "__main__":
    run(main())
