"""Run the simulator: in-process on the caller's event loop, or as its own command."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import uvicorn

from services.aio import run
from services.errors import CannotListen
from services.provider.simulator.app import build_app
from services.provider.simulator.engine import SimConfig, Simulator


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class RunningSimulator:
    sim: Simulator
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """What ``DASHSCOPE_BASE_URL`` should be to use this simulator."""
        return f"{self.url}/api/v1"


class EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling, and the decision to exit, to the
    process that embeds it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().serve(sockets)
        except SystemExit:
            # uvicorn exits the process when it cannot bind, having logged why.
            host, port = self.config.host, self.config.port
            raise CannotListen(f"cannot listen on {host}:{port} (logged just before)") from None


def _server(sim: Simulator, host: str, port: int, embedded: bool = True) -> uvicorn.Server:
    config = uvicorn.Config(
        build_app(sim),
        host=host,
        port=port,
        log_level="warning",
        # uvicorn's own log_config gives its loggers handlers of their own, which then
        # print bare text for every uvicorn server in the process, the admin probe's too.
        log_config=None,
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=1,
    )
    return EmbeddedServer(config) if embedded else uvicorn.Server(config)


@contextlib.asynccontextmanager
async def running_simulator(
    config: SimConfig | None = None, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[RunningSimulator]:
    """Serve a simulator on this event loop for the length of the block."""
    sim = Simulator(config)
    port = port or free_port(host)
    server = _server(sim, host, port)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("simulator stopped during start")
        await asyncio.sleep(0.01)
    try:
        yield RunningSimulator(sim, host, port)
    finally:
        server.should_exit = True
        await task


def serve(config: SimConfig, host: str, port: int) -> None:
    """Blocking entry point of ``imagegen simulator``."""
    run(_server(Simulator(config), host, port, embedded=False).serve())
