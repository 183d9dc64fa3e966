"""Publishing with publisher confirms and mandatory routing; a returned message raises."""

from __future__ import annotations

import json
from typing import Any, cast

import aiormq
from aio_pika.abc import AbstractChannel, DeliveryMode
from aio_pika.exceptions import AMQPError, DeliveryError, PublishError
from aiormq import spec
from aiormq.exceptions import AMQPConnectionError, ChannelInvalidStateError

from services.broker.errors import BrokerError, BrokerUnavailable, PublishReturned
from services.db.rows import Outgoing


def encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


class Publisher:
    """Publishes on one confirming channel (``on_return_raises=True``).

    Publishes go to aiormq's channel directly, without waiting for their frames to be
    written before the next publish may go (aio-pika's ``Exchange.publish`` waits, so a
    batch left one publish per loop turn): a relay batch reaches the broker together and is
    confirmed together. Each publish still waits for its own confirm, and the relay sends
    one batch at a time, so unwritten frames stay bounded.
    """

    def __init__(self, channel: AbstractChannel) -> None:
        self.channel = channel

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
        properties = spec.Basic.Properties(
            content_type=content_type,
            delivery_mode=DeliveryMode.PERSISTENT.value,
            message_id=message_id,
            correlation_id=correlation_id,
            headers=headers or None,
        )
        try:
            # The concrete channel: the abstract one does not declare ``wait``.
            channel = cast(aiormq.Channel, await self.channel.get_underlay_channel())
            confirm = await channel.basic_publish(
                body,
                exchange=exchange,
                routing_key=routing_key,
                properties=properties,
                mandatory=True,
                wait=False,
            )
        except (DeliveryError, PublishError) as exc:
            raise PublishReturned(
                f"{exchange or '(default)'}/{routing_key}: not routed or not confirmed ({exc})"
            ) from None
        except (AMQPConnectionError, ChannelInvalidStateError, ConnectionError) as exc:
            raise BrokerUnavailable(f"broker unavailable: {exc.__class__.__name__}") from exc
        except AMQPError as exc:
            raise BrokerError(f"publish failed: {exc}") from exc
        if not isinstance(confirm, spec.Basic.Ack):  # a channel opened without confirms or returns
            raise PublishReturned(f"{exchange or '(default)'}/{routing_key}: not confirmed")
