"""The admin's view of RabbitMQ: connected in the background, so the probe starts (and
answers /readyz with 503) while the broker is down."""

from __future__ import annotations

import asyncio
import contextlib

import aiormq
from aio_pika.abc import AbstractRobustConnection
from aio_pika.exceptions import AMQPError

from services.broker.connection import connect
from services.broker.errors import BrokerUnavailable
from services.broker.topology import Topology, declared_counts
from services.logs import get_logger

log = get_logger("imagegen.admin")
CHECK_TIMEOUT_S = 2.0


class BrokerProbe:
    def __init__(self, amqp_url: str, connection: AbstractRobustConnection | None = None) -> None:
        self.amqp_url = amqp_url
        self.connection = connection
        self._owned = connection is None
        self._channel: aiormq.abc.AbstractChannel | None = None
        self._connecting: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.connection is None:
            self._connecting = asyncio.create_task(self._connect())

    async def _connect(self) -> None:
        while self.connection is None:
            try:
                self.connection = await connect(self.amqp_url, "imagegen-admin")
            except BrokerUnavailable as exc:
                log.warning(
                    "RabbitMQ unreachable, retrying", action="broker_connect", error=str(exc)
                )
                await asyncio.sleep(1.0)

    async def close(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connecting
        if self._channel is not None and not self._channel.is_closed:
            with contextlib.suppress(AMQPError, OSError, ConnectionError):
                await self._channel.close()
        if self._owned and self.connection is not None:
            await self.connection.close()

    async def _get_channel(self) -> aiormq.abc.AbstractChannel:
        connection = self.connection
        if connection is None or connection.is_closed or connection.transport is None:
            raise BrokerUnavailable("RabbitMQ is not connected")
        if self._channel is None or self._channel.is_closed:
            # A plain channel on the connection's current socket, not a robust one: the
            # broker closes the channel of a passive declare that names a missing queue,
            # and a robust channel would reopen itself in the background each time.
            self._channel = await connection.transport.connection.channel()
        return self._channel

    async def depths(self, names: list[str]) -> dict[str, int]:
        """Ready messages per queue; BrokerUnavailable when RabbitMQ does not answer,
        TopologyMissing when a queue is not there."""
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_S):
                channel = await self._get_channel()
                return {name: (await declared_counts(channel, name)).messages for name in names}
        except BrokerUnavailable:  # TopologyMissing included
            raise
        except (AMQPError, OSError, ConnectionError, TimeoutError, RuntimeError) as exc:
            raise BrokerUnavailable(f"RabbitMQ did not answer: {exc.__class__.__name__}") from exc

    async def check(self, topology: Topology) -> None:
        await self.depths([topology.images_queue])
