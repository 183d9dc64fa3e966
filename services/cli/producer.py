"""The CLI's producer: publishing ``task.created`` and ``task.cancel`` as any other
service would, and following the task's events."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue, DeliveryMode
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn
from rich.text import Text

from services import wire
from services.broker.connection import connect
from services.broker.errors import TopologyMissing
from services.broker.topology import Topology
from services.config import Settings

FINAL_EVENTS = frozenset(
    {"task.status.images_ready", "task.status.failed", "task.status.cancelled", "task.rejected"}
)
CANCEL_OUTCOMES = frozenset({"task.status.cancelled", "task.cancel_rejected", "task.rejected"})
"""What answers a ``task.cancel``: the task may still store images before it, or end
another way first, and the cancel is then refused."""


def new_task_id() -> str:
    return f"cli-{uuid.uuid4().hex[:16]}"


def task_created(
    prompt: str, user_id: str, image_count: int, task_id: str | None = None
) -> dict[str, Any]:
    """A ``task.created`` body, under a new id unless one is given."""
    return {
        "task_id": task_id or new_task_id(),
        "user_id": user_id,
        "prompt": prompt,
        "image_count": image_count,
    }


@asynccontextmanager
async def watching(
    settings: Settings, key: str = "#"
) -> AsyncIterator[tuple[aio_pika.abc.AbstractChannel, AbstractQueue]]:
    """A private, self-deleting queue bound to the status events ``key`` matches."""
    topology = Topology(settings.namespace, settings.retry_ttl_scale)
    connection = await connect(settings.amqp_url, "imagegen-cli")
    try:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        status = await channel.declare_exchange(
            topology.status_exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(status, routing_key=key)
        yield channel, queue
    finally:
        await connection.close()


async def publish_request(
    channel: aio_pika.abc.AbstractChannel,
    settings: Settings,
    routing_key: str,
    body: dict[str, Any],
    correlation_id: str | None = None,
) -> None:
    """Publish a ``task.created`` or ``task.cancel``, confirmed and mandatory."""
    topology = Topology(settings.namespace, settings.retry_ttl_scale)
    exchange = await channel.declare_exchange(
        topology.tasks_exchange, aio_pika.ExchangeType.TOPIC, durable=True
    )
    try:
        await exchange.publish(
            aio_pika.Message(
                json.dumps(body).encode(),
                content_type="application/json",
                delivery_mode=DeliveryMode.PERSISTENT,
                correlation_id=correlation_id,
            ),
            routing_key=routing_key,
            mandatory=True,
        )
    except aio_pika.exceptions.PublishError:
        raise TopologyMissing(
            f"no queue takes {routing_key} from {topology.tasks_exchange}, so it was not sent"
        ) from None


async def _event(message: AbstractIncomingMessage) -> dict[str, Any] | None:
    """The event a message carries, the message acked; None when it carries no JSON object:
    not one of the service's events, someone else publishes here."""
    async with message.process():
        try:
            event = wire.loads(message.body)
        except wire.BadJson:
            return None
    return event if isinstance(event, dict) else None


async def events_of(
    queue: AbstractQueue, task_id: str, timeout_s: float, until: frozenset[str] = FINAL_EVENTS
) -> AsyncIterator[dict[str, Any]]:
    """Events of one task until one of the kinds ``until``, or until ``timeout_s`` pass
    without one of its events (other tasks' events, however many, do not count)."""
    clock = asyncio.get_running_loop().time
    deadline = clock() + timeout_s
    async with queue.iterator() as messages:
        while True:
            try:
                message = await asyncio.wait_for(anext(messages), deadline - clock())
            except TimeoutError:
                return
            event = await _event(message)
            if event is None or event.get("task_id") != task_id:
                continue
            deadline = clock() + timeout_s
            yield event
            if event.get("event_type") in until:
                return


async def cancel_answer(
    settings: Settings, body: dict[str, Any], timeout_s: float
) -> dict[str, Any] | None:
    """Publish a ``task.cancel`` and return the event that answers it, or None when no
    event of the task comes for ``timeout_s``."""
    answer = None
    async with watching(settings) as (channel, queue):
        await publish_request(channel, settings, "task.cancel", body)
        async for event in events_of(queue, body["task_id"], timeout_s, until=CANCEL_OUTCOMES):
            answer = event  # the last is the answer: the events stop there
    return answer if answer and answer["event_type"] in CANCEL_OUTCOMES else None


async def follow(
    queue: AbstractQueue, task_id: str, image_count: int, timeout_s: float, console: Console
) -> str | None:
    """Show a task's images stored and retries as they happen, then how it ended; return
    its final status, or None when none of its events came for ``timeout_s``."""
    final = None
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        console=console,
    ) as bar:
        images = bar.add_task("waiting", total=image_count)
        async for event in events_of(queue, task_id, timeout_s):
            kind = event["event_type"]
            done = event.get("images_ready") or 0
            bar.update(images, completed=done, description=event["status"] or kind)
            if kind == "task.image.retrying":
                bar.console.print(Text(_retry_text(event["retry"])))
            final = event
    if final is None or final["event_type"] not in FINAL_EVENTS:
        return None
    status: str = final["status"] or "rejected"  # a refused task.created never became a task
    console.print(f"final status: [bold]{status}[/bold]")
    for image in final.get("images") or []:
        console.print(Text(f"  image {image['index']}: {image['url']}"), soft_wrap=True)
    if final.get("error"):
        console.print(Text(f"  error: {final['error']['message']}"))
    return status


def _retry_text(retry: dict[str, Any]) -> str:
    return (
        f"image {retry.get('index')}: {retry.get('reason')}, "
        f"retry {retry.get('attempt')} in {retry.get('delay_s')} s"
    )


def event_line(event: dict[str, Any]) -> Text:
    """One event on one line: when, what, which task, its status and version, then its
    progress and, for a retry or a failure, why. Text, never markup: a provider's message
    may hold ``[/b]``."""
    parts = [
        str(event.get("occurred_at", "?")),
        str(event.get("event_type", "?")),
        str(event.get("task_id", "?")),
        str(event.get("status") or "-"),
        "-" if event.get("version") is None else f"v{event['version']}",  # a rejection has none
    ]
    if event.get("image_count"):
        parts.append(f"{event.get('images_ready') or 0}/{event['image_count']}")
    retry, error = event.get("retry"), event.get("error")
    if isinstance(retry, dict):
        parts.append(_retry_text(retry))
    if isinstance(error, dict):
        parts.append(f"{error.get('code')}: {error.get('message')}")
    return Text("  ".join(parts))


async def show_events(
    queue: AbstractQueue, console: Console, task_id: str | None, count: int | None
) -> None:
    """Print the events the queue receives as they come: those of ``task_id`` until its
    last, when one is given, and at most ``count`` of them."""
    shown = 0
    async with queue.iterator() as messages:
        async for message in messages:
            event = await _event(message)
            if event is None or task_id not in (None, event.get("task_id")):
                continue
            console.print(event_line(event), soft_wrap=True)
            shown += 1
            if shown == count or (task_id is not None and event.get("event_type") in FINAL_EVENTS):
                return
