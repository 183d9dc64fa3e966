"""The dead queue for operators: what is parked there and why, and sending it back.

A message is parked with the queue it came from and its routing key (``consumer.py``), so
it can go back to where it was first delivered once its cause is fixed (a database that
was not migrated, a bug): a ``task.created`` to the tasks exchange, an image message to the
work exchange. Both are safe to deliver twice: creation is idempotent per ``task_id``, and
a worker never pays for an image twice. A message that is still bad is parked again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from services.broker.consumer import ORIGIN_QUEUE_HEADER, REASON_HEADER, ROUTING_KEY_HEADER
from services.broker.publisher import Publisher
from services.broker.topology import Topology, queue_counts

GET_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class DeadMessage:
    origin: str
    """The queue the message was parked from."""
    routing_key: str
    reason: str
    task_id: str | None


def _header(message: AbstractIncomingMessage, name: str) -> str:
    value = (message.headers or {}).get(name)
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return "" if value is None else str(value)


def _task_id(body: bytes) -> str | None:
    try:
        # Read leniently: a body parked for a NaN still names its task to the operator.
        parsed: Any = json.loads(body)
    except (ValueError, RecursionError):
        return None
    task_id = parsed.get("task_id") if isinstance(parsed, dict) else None
    return task_id if isinstance(task_id, str) and task_id.isprintable() else None


def describe(message: AbstractIncomingMessage) -> DeadMessage:
    return DeadMessage(
        origin=_header(message, ORIGIN_QUEUE_HEADER),
        routing_key=_header(message, ROUTING_KEY_HEADER),
        reason=_header(message, REASON_HEADER),
        task_id=_task_id(message.body),
    )


async def _take(
    channel: AbstractChannel, topology: Topology, limit: int
) -> list[AbstractIncomingMessage]:
    """Up to ``limit`` dead messages, unacknowledged, oldest first. Counted first, so a
    message parked again meanwhile is not taken twice."""
    count = (await queue_counts(channel, topology.dead_queue)).messages
    queue = await channel.get_queue(topology.dead_queue, ensure=False)
    taken: list[AbstractIncomingMessage] = []
    for _ in range(min(count, limit)):
        message = await queue.get(no_ack=False, fail=False, timeout=GET_TIMEOUT_S)
        if message is None:
            break
        taken.append(message)
    return taken


async def peek(channel: AbstractChannel, topology: Topology, limit: int) -> list[DeadMessage]:
    """The oldest ``limit`` dead messages, left where they are."""
    taken = await _take(channel, topology, limit)
    for message in taken:
        await message.nack(requeue=True)  # back to its place in the queue
    return [describe(message) for message in taken]


def _destination(topology: Topology, origin: str) -> str | None:
    return {
        topology.intake_queue: topology.tasks_exchange,
        topology.images_queue: topology.work_exchange,
    }.get(origin)


async def replay(
    channel: AbstractChannel, publisher: Publisher, topology: Topology, limit: int
) -> tuple[list[DeadMessage], list[DeadMessage]]:
    """Send up to ``limit`` dead messages back to the exchange of the queue they came
    from, each removed only once the broker has confirmed its copy. Returns the messages
    sent and those left in place (from a queue that takes nothing back)."""
    sent: list[DeadMessage] = []
    kept: list[DeadMessage] = []
    for message in await _take(channel, topology, limit):
        dead = describe(message)
        exchange = _destination(topology, dead.origin)
        if exchange is None:
            await message.nack(requeue=True)
            kept.append(dead)
            continue
        headers = {
            k: v
            for k, v in (message.headers or {}).items()
            if k not in (REASON_HEADER, ROUTING_KEY_HEADER, ORIGIN_QUEUE_HEADER)
        }
        await publisher.publish_raw(
            exchange,
            dead.routing_key,
            message.body,
            message_id=message.message_id,
            headers=headers,
            correlation_id=message.correlation_id,
            content_type=message.content_type,
        )
        await message.ack()
        sent.append(dead)
    return sent, kept
