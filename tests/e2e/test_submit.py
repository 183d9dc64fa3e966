"""The CLI's producer (``imagegen submit``): it publishes ``task.created`` as another
service would, follows the task's events to the final one, and says so when nothing in
its namespace would take the task."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import pytest

from services.broker.errors import TopologyMissing
from services.broker.topology import Topology
from services.cli.producer import events_of, new_task_id, publish_request, watching
from services.config import load_settings
from services.runtime import Wiring


async def test_a_submitted_task_is_followed_from_its_first_event_to_its_final_one(
    service: Wiring,
) -> None:
    task_id = new_task_id()
    body = {"task_id": task_id, "user_id": "cli", "prompt": "a fox", "image_count": 2}
    async with watching(service.settings) as (channel, queue):
        await publish_request(channel, service.settings, "task.created", body)
        events = [event async for event in events_of(queue, task_id, 20)]
    kinds = [event["event_type"] for event in events]
    assert kinds[0] == "task.status.pending" and kinds[-1] == "task.status.images_ready"
    assert kinds.count("task.image.ready") == 2 and len(events[-1]["images"]) == 2


async def test_submitting_where_no_service_ever_ran_is_refused_with_the_reason(
    service: Wiring,
) -> None:
    namespace = f"never-ran-{uuid.uuid4().hex[:8]}"
    settings = load_settings(**(service.settings.model_dump() | {"namespace": namespace}))
    body = {"task_id": new_task_id(), "user_id": "cli", "prompt": "a fox", "image_count": 1}
    try:
        async with watching(settings) as (channel, _):
            with pytest.raises(
                TopologyMissing, match=f"no queue takes task.created from {namespace}"
            ):
                await publish_request(channel, settings, "task.created", body)
    finally:
        connection = await aio_pika.connect_robust(settings.amqp_url)
        async with connection:
            await Topology(namespace).delete(await connection.channel())


async def test_waiting_gives_up_after_the_tasks_own_silence_however_busy_the_others_are(
    service: Wiring,
) -> None:
    # Another task's events arrive all the while; only this task's would restart the wait.
    namespace = f"busy-{uuid.uuid4().hex[:8]}"
    settings = load_settings(**(service.settings.model_dump() | {"namespace": namespace}))
    other = json.dumps({"task_id": "someone-else", "event_type": "task.image.ready"}).encode()
    try:
        async with watching(settings) as (channel, queue):
            status = await channel.get_exchange(Topology(namespace).status_exchange)

            async def chatter() -> None:
                while True:
                    await status.publish(aio_pika.Message(other), routing_key="task.image.ready")
                    await asyncio.sleep(0.05)

            noise = asyncio.create_task(chatter())
            clock = asyncio.get_running_loop().time
            started = clock()
            try:
                events = await asyncio.wait_for(
                    _all(events_of(queue, "cli-silent-task", 0.5)), timeout=5
                )
            finally:
                noise.cancel()
            took = clock() - started
    finally:
        connection = await aio_pika.connect_robust(settings.amqp_url)
        async with connection:
            await Topology(namespace).delete(await connection.channel())
    assert events == [] and 0.5 <= took < 2


async def _all(events: AsyncIterator[dict[str, Any]]) -> list[dict[str, Any]]:
    return [event async for event in events]
