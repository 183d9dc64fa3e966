"""Publishing with publisher confirms and mandatory routing; a returned message raises."""

from __future__ import annotations

import json
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, DeliveryMode
from aio_pika.exceptions import AMQPError, DeliveryError, PublishError
from aiormq.exceptions import AMQPConnectionError, ChannelInvalidStateError

from services.broker.errors import BrokerError, BrokerUnavailable, PublishReturned
from services.db.rows import Outgoing


def encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


class Publisher:
    """Publishes on one confirming channel (``on_return_raises=True``)."""

    def __init__(self, channel: AbstractChannel) -> None:
        self.channel = channel
        self._exchanges: dict[str, AbstractExchange] = {}

    async def _exchange(self, name: str) -> AbstractExchange:
        if name == "":
            return self.channel.default_exchange
        if name not in self._exchanges:
            self._exchanges[name] = await self.channel.get_exchange(name, ensure=False)
        return self._exchanges[name]

    async def publish(self, message: Outgoing) -> None:
        await self.publish_raw(
            message.exchange,
            message.routing_key,
            encode(message.body),
            message_id=message.message_id,
            headers=message.headers,
            correlation_id=message.correlation_id,
        )

    async def publish_raw(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        *,
        message_id: str | None = None,
        headers: dict[str, Any] | None = None,
        correlation_id: str | None = None,
        content_type: str | None = "application/json",
    ) -> None:
        amqp_message = aio_pika.Message(
            body,
            content_type=content_type,
            delivery_mode=DeliveryMode.PERSISTENT,
            message_id=message_id,
            correlation_id=correlation_id,
            headers=headers or None,
        )
        try:
            target = await self._exchange(exchange)
            await target.publish(amqp_message, routing_key=routing_key, mandatory=True)
        except (DeliveryError, PublishError) as exc:
            raise PublishReturned(
                f"{exchange or '(default)'}/{routing_key}: not routed or not confirmed ({exc})"
            ) from None
        except (AMQPConnectionError, ChannelInvalidStateError, ConnectionError) as exc:
            raise BrokerUnavailable(f"broker unavailable: {exc.__class__.__name__}") from exc
        except AMQPError as exc:
            raise BrokerError(f"publish failed: {exc}") from exc
