"""The CLI's producer (``imagegen submit``): it publishes ``task.created`` as another
service would, follows the task's events to the final one, and says so when nothing in
its namespace would take the task."""

from __future__ import annotations

import uuid

import aio_pika
import pytest

from services.broker.errors import TopologyMissing
from services.broker.topology import Topology
from services.config import load_settings
from services.runtime import Wiring
from services.submit import events_of, new_task_id, publish_request, watching


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
