"""Serving the admin app: inside ``imagegen run`` (sharing its I/O) or on its own."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import uvicorn

from services.admin.app import AdminDeps, create_app
from services.admin.broker import BrokerProbe
from services.config import Settings
from services.provider.simulator.server import EmbeddedServer

if TYPE_CHECKING:
    from services.runtime import Wiring


def _server(settings: Settings, deps: AdminDeps | None) -> uvicorn.Server:
    config = uvicorn.Config(
        create_app(settings, deps),
        host="0.0.0.0",
        port=settings.http_port,
        log_level="warning",
        log_config=None,  # its lines go through the service's log format (services/logs.py)
        access_log=False,
        timeout_graceful_shutdown=2,
    )
    return EmbeddedServer(config)


async def serve_admin(wired: Wiring, stop: asyncio.Event) -> None:
    """Serve until ``stop``; a server that cannot start raises at once (``CannotListen``)."""
    deps = AdminDeps(
        wired.settings,
        wired.repo,
        wired.slots,
        wired.events,
        wired.topology,
        BrokerProbe(wired.settings.amqp_url, wired.connection),
    )
    server = _server(wired.settings, deps)
    serving = asyncio.create_task(server.serve())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait([serving, stopping], return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    server.should_exit = True
    await serving
