"""Every exchange and queue: names, types and arguments, in one place (CONTRACT.md §1-3).

Retry tiers are queues with a per-queue ``x-message-ttl`` that dead-letter back to the work
exchange. Per-message TTLs are avoided on purpose: an expired message only leaves from the
head of its queue, so a 2 s retry would wait behind a 120 s one.
"""

from __future__ import annotations

from dataclasses import dataclass

import aiormq
from aio_pika.abc import AbstractChannel, ExchangeType
from aiormq.exceptions import ChannelNotFoundEntity, ChannelPreconditionFailed

from services.broker.errors import BrokerError, TopologyMissing
from statemachine import ErrorKind, retry_delay_s
from statemachine.retry import TIER_COUNT

IMAGE_ROUTING_KEY = "image"


@dataclass(frozen=True)
class RetryQueue:
    name: str
    ttl_ms: int


@dataclass(frozen=True)
class Topology:
    namespace: str = "imagegen"
    ttl_scale: float = 1.0
    """Shrinks the retry TTLs; 1.0 outside tests and benchmarks."""

    @property
    def tasks_exchange(self) -> str:
        """Inbound ``task.created`` / ``task.cancel`` (topic)."""
        return f"{self.namespace}.tasks"

    @property
    def status_exchange(self) -> str:
        """Outbound task-status events (topic)."""
        return f"{self.namespace}.status"

    @property
    def work_exchange(self) -> str:
        """Image messages, and where retry tiers dead-letter to (direct)."""
        return f"{self.namespace}.work"

    @property
    def images_queue(self) -> str:
        return f"{self.namespace}.images"

    @property
    def intake_queue(self) -> str:
        return f"{self.namespace}.intake"

    @property
    def dead_queue(self) -> str:
        return f"{self.namespace}.dead"

    @property
    def live_status_queue(self) -> str:
        """Bound to every status event, so each is routable even with no subscriber (a
        returned message then always means a broken topology). It keeps none: an event
        reaches whoever consumes it at that moment and is otherwise dropped at once."""
        return f"{self.namespace}.status.live"

    @property
    def former_status_queue(self) -> str:
        """What ``live_status_queue`` replaced: a durable tail of 10,000 events, which cost
        RabbitMQ a third of its CPU per image (docs/ARCHITECTURE.md)."""
        return f"{self.namespace}.status.recent"

    def retry_queue(self, kind: ErrorKind, tier: int) -> RetryQueue:
        family = "429" if kind is ErrorKind.RATE_LIMITED else "transient"
        delay_s = retry_delay_s(kind, tier)
        ttl_ms = max(1, round(delay_s * 1000 * self.ttl_scale))
        return RetryQueue(f"{self.namespace}.retry.{family}.{delay_s}s", ttl_ms)

    @property
    def retry_queues(self) -> list[RetryQueue]:
        return [
            self.retry_queue(kind, tier)
            for kind in (ErrorKind.RATE_LIMITED, ErrorKind.TRANSIENT)
            for tier in range(TIER_COUNT)
        ]

    @property
    def all_queues(self) -> list[str]:
        return [
            self.intake_queue,
            self.images_queue,
            *(q.name for q in self.retry_queues),
            self.dead_queue,
            self.live_status_queue,
        ]

    @property
    def all_exchanges(self) -> list[str]:
        return [self.tasks_exchange, self.status_exchange, self.work_exchange]

    async def declare(self, channel: AbstractChannel) -> None:
        """Declare everything, durable; safe to repeat at every start."""
        try:
            await self._declare(channel)
        except ChannelPreconditionFailed as exc:
            raise BrokerError(
                f"the broker's {self.namespace} topology differs from this process's "
                f"({exc}); processes of one namespace must share IMAGEGEN_RETRY_TTL_SCALE"
            ) from None

    async def _declare(self, channel: AbstractChannel) -> None:
        tasks = await channel.declare_exchange(
            self.tasks_exchange, ExchangeType.TOPIC, durable=True
        )
        status = await channel.declare_exchange(
            self.status_exchange, ExchangeType.TOPIC, durable=True
        )
        work = await channel.declare_exchange(self.work_exchange, ExchangeType.DIRECT, durable=True)

        intake = await channel.declare_queue(self.intake_queue, durable=True)
        # Everything published to the tasks exchange reaches intake, so an unknown routing
        # key is dead-lettered with a reason instead of vanishing.
        await intake.bind(tasks, routing_key="#")
        images = await channel.declare_queue(self.images_queue, durable=True)
        await images.bind(work, routing_key=IMAGE_ROUTING_KEY)
        for retry in self.retry_queues:
            await channel.declare_queue(
                retry.name,
                durable=True,
                arguments={
                    "x-message-ttl": retry.ttl_ms,
                    "x-dead-letter-exchange": self.work_exchange,
                    "x-dead-letter-routing-key": IMAGE_ROUTING_KEY,
                },
            )
        await channel.declare_queue(self.dead_queue, durable=True)
        # A TTL of 0 lets RabbitMQ drop an event nobody takes before storing it.
        live = await channel.declare_queue(
            self.live_status_queue, durable=True, arguments={"x-message-ttl": 0}
        )
        await live.bind(status, routing_key="#")
        await channel.queue_delete(self.former_status_queue)

    async def delete(self, channel: AbstractChannel) -> None:
        """Remove every queue and exchange of this namespace (tests clean up with it)."""
        for queue in [*self.all_queues, self.former_status_queue]:
            await channel.queue_delete(queue)
        for exchange in self.all_exchanges:
            await channel.exchange_delete(exchange)


@dataclass(frozen=True)
class QueueCounts:
    messages: int
    consumers: int


async def queue_counts(channel: AbstractChannel, name: str) -> QueueCounts:
    """Ready messages and consumers of a queue, as the broker says right now.

    A passive declare on the underlying channel: aio-pika's robust channel remembers
    declared queues and would answer a repeated ``declare_queue`` with the first counts.
    """
    return await declared_counts(await channel.get_underlay_channel(), name)


async def declared_counts(channel: aiormq.abc.AbstractChannel, name: str) -> QueueCounts:
    """``queue_counts`` on a plain aiormq channel; ``TopologyMissing`` when the queue is not
    there (the broker then closes the channel)."""
    try:
        declared = await channel.queue_declare(queue=name, passive=True)
    except ChannelNotFoundEntity:
        raise TopologyMissing(f"queue {name} does not exist") from None
    return QueueCounts(int(declared.message_count or 0), int(declared.consumer_count or 0))


__all__ = [
    "IMAGE_ROUTING_KEY",
    "QueueCounts",
    "RetryQueue",
    "Topology",
    "declared_counts",
    "queue_counts",
]
