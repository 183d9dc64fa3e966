"""Opening the process's RabbitMQ connection, with the reason in our words when it fails."""

from __future__ import annotations

import aio_pika
from aio_pika.abc import AbstractRobustConnection
from aiormq.exceptions import (
    AMQPError,
    AuthenticationError,
    InvalidFrameError,
    ProbableAuthenticationError,
)
from yarl import URL

from services.broker.errors import BrokerUnavailable
from services.broker.frames import TurnTransport

RECONNECT_INTERVAL_S = 1.0
"""How soon a lost broker connection is retried (aio-pika's default is 5 s)."""


async def connect(url: str, name: str) -> AbstractRobustConnection:
    """A robust connection named ``name`` in RabbitMQ's connection list; ``BrokerUnavailable``
    saying why when the first attempt fails (later losses are reconnected by aio-pika)."""
    where = URL(url)
    port = where.port or (5671 if where.scheme == "amqps" else 5672)
    broker = f"RabbitMQ at {where.host}:{port}"
    connection = aio_pika.RobustConnection(
        where,
        client_properties={"connection_name": name},
        reconnect_interval=RECONNECT_INTERVAL_S,
    )
    if where.scheme == "amqp":
        # Read by aiormq at every (re)connection; aio-pika's own arguments do not pass it.
        connection.kwargs["transport_factory"] = TurnTransport()
    try:
        await connection.connect()
    except BaseException as exc:
        # Left open, a failed connection closes itself when collected, and outside a
        # running loop that close is a coroutine never awaited.
        await connection.close()
        if isinstance(exc, InvalidFrameError):
            # How aiormq reports the broker closing the connection as it opens, which
            # RabbitMQ does for a virtual host that is missing or closed to the user.
            vhost = where.path[1:] or "/"
            raise BrokerUnavailable(
                f"{broker} closed the connection as it opened: does the virtual host"
                f" {vhost!r} of IMAGEGEN_AMQP_URL exist, and may this user use it?"
            ) from exc
        if isinstance(exc, AuthenticationError | ProbableAuthenticationError):
            user = where.user
            raise BrokerUnavailable(f"{broker} refused the login of user {user!r}: {exc}") from exc
        if isinstance(exc, TimeoutError | AMQPError | OSError):
            raise BrokerUnavailable(f"{broker} cannot be reached: {exc}") from exc
        raise
    return connection
