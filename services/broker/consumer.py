"""The one consumer wrapper: handlers raise outcomes, this settles the message.

- returns normally → ack
- ``Drop`` → ack (nothing to do)
- ``Reject`` → park in the dead queue with ``x-imagegen-reason``, publish the optional
  event, then ack
- database or broker unavailable → nack with requeue after a pause (nothing lost)
- any other exception → park with the error as reason, then ack (a bug must not loop)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue
from aio_pika.exceptions import AMQPError

from services import metrics
from services.broker.errors import BrokerError, BrokerUnavailable, Drop, Reject
from services.broker.publisher import Publisher
from services.broker.topology import Topology
from services.db.errors import DatabaseUnavailable
from services.logs import get_logger

Handler = Callable[[AbstractIncomingMessage], Awaitable[None]]
REASON_HEADER = "x-imagegen-reason"
ROUTING_KEY_HEADER = "x-imagegen-routing-key"
ORIGIN_QUEUE_HEADER = "x-imagegen-queue"
UNAVAILABLE_PAUSE_S = 1.0

log = get_logger("imagegen.consumer")


class Consumer:
    def __init__(
        self,
        role: str,
        channel: AbstractChannel,
        queue_name: str,
        handler: Handler,
        publisher: Publisher,
        topology: Topology,
        prefetch: int,
    ) -> None:
        self.role = role
        self.channel = channel
        self.queue_name = queue_name
        self.handler = handler
        self.publisher = publisher
        self.topology = topology
        self.prefetch = prefetch
        self._queue: AbstractQueue | None = None
        self._tag: str | None = None
        self._inflight: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        await self.channel.set_qos(prefetch_count=self.prefetch)
        self._queue = await self.channel.get_queue(self.queue_name, ensure=True)
        self._tag = await self._queue.consume(self._on_message)
        log.info("consuming", action="consume_start", role=self.role, queue=self.queue_name)

    async def stop(self, grace_s: float) -> None:
        """Stop taking messages, let in-flight ones finish for ``grace_s``, hand back the rest."""
        if self._queue is not None and self._tag is not None:
            try:
                await self._queue.cancel(self._tag)
            except (AMQPError, ConnectionError, RuntimeError):
                pass
        if self._inflight:
            _, pending = await asyncio.wait(self._inflight, timeout=grace_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=2)
                log.warning(
                    "handing back unfinished messages",
                    action="consume_stop",
                    role=self.role,
                    handed_back=len(pending),
                )
        log.info("stopped consuming", action="consume_stop", role=self.role)

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        task = asyncio.create_task(self._settle(message))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _settle(self, message: AbstractIncomingMessage) -> None:
        started = time.monotonic()
        outcome = "ack"
        try:
            await self.handler(message)
            await self._ack(message)
        except Drop as drop:
            outcome = "drop"
            log.info("message dropped", action="drop", role=self.role, reason=drop.reason)
            await self._ack(message)
        except Reject as reject:
            outcome = "reject"
            await self._park(message, reject.reason)
            if reject.event is not None:
                try:
                    await self.publisher.publish(reject.event)
                except BrokerError as exc:
                    log.error("rejection event lost", action="reject_event", error=str(exc))
        except (DatabaseUnavailable, BrokerUnavailable) as exc:
            outcome = "requeue"
            log.warning(
                "dependency unavailable, requeueing",
                action="requeue",
                role=self.role,
                error=str(exc),
            )
            await asyncio.sleep(UNAVAILABLE_PAUSE_S)
            await self._nack(message)
        except asyncio.CancelledError:
            outcome = "handed_back"
            raise
        except Exception as exc:
            outcome = "error"
            log.exception("handler failed", action="handler_error", role=self.role)
            await self._park(message, f"internal error: {exc.__class__.__name__}: {exc}")
        finally:
            metrics.MESSAGES.labels(self.role, outcome).inc()
            metrics.HANDLER_SECONDS.labels(self.role).observe(time.monotonic() - started)

    async def _park(self, message: AbstractIncomingMessage, reason: str) -> None:
        headers: dict[str, Any] = dict(message.headers or {})
        headers[REASON_HEADER] = reason[:1000]
        headers[ROUTING_KEY_HEADER] = message.routing_key or ""
        headers[ORIGIN_QUEUE_HEADER] = self.queue_name
        try:
            await self.publisher.publish_raw(
                "",
                self.topology.dead_queue,
                message.body,
                message_id=message.message_id,
                headers=headers,
                correlation_id=message.correlation_id,
                content_type=message.content_type,
            )
        except BrokerError as exc:
            log.error("could not park message, requeueing", action="dead_letter", error=str(exc))
            await asyncio.sleep(UNAVAILABLE_PAUSE_S)
            await self._nack(message)
            return
        metrics.DEAD_LETTERED.labels(self.role).inc()
        log.warning(
            "message parked in the dead queue", action="dead_letter", role=self.role, reason=reason
        )
        await self._ack(message)

    async def _ack(self, message: AbstractIncomingMessage) -> None:
        try:
            await message.ack()
        except (AMQPError, ConnectionError, RuntimeError) as exc:
            # The channel is gone: the broker redelivers the message, handlers are idempotent.
            log.warning("ack lost, message will be redelivered", action="ack", error=str(exc))

    async def _nack(self, message: AbstractIncomingMessage) -> None:
        try:
            await message.nack(requeue=True)
        except (AMQPError, ConnectionError, RuntimeError) as exc:
            log.warning("nack lost, message will be redelivered", action="nack", error=str(exc))
