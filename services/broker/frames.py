"""The broker connection's socket, written in runs of frames rather than frame by frame.

aiormq's writer takes about one frame from its queue every other turn of the event loop
while a batch is published (each publish waits its turn for the channel's lock), and the
loop sends each write at once: a relay batch of 50 publishes was 50 sends, each waking
RabbitMQ to read it. Here a write waits while the turns that follow bring more, and the
run goes out as one send, in order, once ``QUIET_TURNS`` pass without a write or the
first of it has waited ``MAX_WAIT_S``. A drain, a close or an end-of-file sends what is
waiting first (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiormq.connection import TransportFactory
from aiormq.exceptions import AMQPConnectionError
from yarl import URL

QUIET_TURNS = 3
"""A batch's next frame comes two turns after the one before it (the lock, then the queue):
three turns without one mean the batch is all written."""
MAX_WAIT_S = 0.002
"""Bounds the wait under a steady stream of writes, where three turns never pass without one."""


class TurnWriter(asyncio.StreamWriter):
    def __init__(
        self,
        transport: asyncio.WriteTransport,
        protocol: asyncio.StreamReaderProtocol,
        reader: asyncio.StreamReader,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        super().__init__(transport, protocol, reader, loop)
        self._scheduler = loop
        self._waiting: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._waiting.append(bytes(data))
        if len(self._waiting) == 1:
            self._scheduler.call_soon(self._settle, 1, 0, self._scheduler.time() + MAX_WAIT_S)

    def _settle(self, seen: int, quiet: int, due: float) -> None:
        count = len(self._waiting)
        quiet = 0 if count > seen else quiet + 1
        if quiet < QUIET_TURNS and self._scheduler.time() < due:
            self._scheduler.call_soon(self._settle, count, quiet, due)
        else:
            self.flush()

    def flush(self) -> None:
        if self._waiting:
            data, self._waiting = b"".join(self._waiting), []
            if not self.transport.is_closing():
                super().write(data)

    async def drain(self) -> None:
        self.flush()
        await super().drain()

    def write_eof(self) -> None:
        self.flush()
        super().write_eof()

    def close(self) -> None:
        self.flush()
        super().close()


class TurnTransport(TransportFactory):
    """How an ``amqp://`` connection opens: as ``asyncio.open_connection`` does, with a
    ``TurnWriter``."""

    async def create(
        self, url: URL, **kwargs: Any
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        kwargs.pop("ssl_context_provider", None)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        try:
            transport, _ = await loop.create_connection(
                lambda: protocol, host=url.host or "localhost", port=url.port or 5672, **kwargs
            )
        except OSError as exc:
            raise AMQPConnectionError(*exc.args) from exc
        return reader, TurnWriter(transport, protocol, reader, loop)
