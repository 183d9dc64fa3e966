"""Commands that run the service: all of it, one role, the migrations, the simulator."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Annotated

import typer

from services.cli.common import app, console, execute, settings
from services.config import Settings
from services.errors import validation_message
from services.logs import get_logger

log = get_logger("imagegen.cli")


async def _migrate(config: Settings) -> None:
    from services.db import migrate as schema
    from services.db.engine import ensure_database

    if await ensure_database(config.database_url):
        log.info("database created", action="migrate")
    if await schema.migrate(config.database_url):
        log.info("migrations applied", action="migrate")


async def _serve(config: Settings, roles: list[str], migrate: bool, demo: bool) -> None:
    from services.runtime import Role, run

    if migrate:
        await _migrate(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    ready = asyncio.Event()
    service = asyncio.create_task(
        run(config, [Role(r) for r in roles], stop, lambda _: ready.set())
    )
    if demo:
        await asyncio.wait(
            [service, asyncio.create_task(ready.wait())], return_when=asyncio.FIRST_COMPLETED
        )
        if ready.is_set():
            from services.cli.producer import task_created
            from services.cli.tasks import submit_and_follow

            body = task_created("a cute cat wearing a tiny wizard hat", "demo", 4)
            with contextlib.suppress(typer.Exit):  # a failed demo task still leaves a service
                await submit_and_follow(config, body, True, 120)
            console.print("[green]The service keeps running; press Ctrl+C to stop.[/green]")
    await service


@app.command("run")
def run_all(
    migrate: Annotated[
        bool, typer.Option(help="Create the database and apply migrations first.")
    ] = True,
    demo: Annotated[
        bool, typer.Option(help="Submit a sample task once started and show it finish.")
    ] = False,
) -> None:
    """Run every role in one process: intake, worker, relay and the admin probe."""
    config = settings()
    execute(_serve(config, ["intake", "worker", "relay", "admin"], migrate, demo))


def _role_command(role: str, doc: str) -> None:
    def command() -> None:
        execute(_serve(settings(), [role], False, False))

    command.__doc__ = doc
    app.command(role)(command)


_role_command("worker", "Run image workers only (scale these out).")
_role_command("intake", "Run the task.created / task.cancel consumer only.")
_role_command("relay", "Run the outbox relay and the reconciler only.")
_role_command("admin", "Run the admin HTTP probe only.")


@app.command()
def migrate() -> None:
    """Create the database if missing and apply every migration."""
    execute(_migrate(settings()))


@app.command()
def simulator(
    host: str = "127.0.0.1",
    port: int = 8089,
    api_key: Annotated[str, typer.Option(help="The key clients must send.")] = "sim-key",
    rate: Annotated[float | None, typer.Option(help="Submissions per second (429 above).")] = None,
    running_limit: Annotated[
        int | None, typer.Option(help="Provider tasks running at once.")
    ] = None,
    latency: Annotated[float, typer.Option(help="Seconds per image.")] = 0.5,
    p_429: float = 0.0,
    p_500: float = 0.0,
    p_503: float = 0.0,
    p_504: float = 0.0,
    p_hang: float = 0.0,
    p_task_failed: float = 0.0,
    seed: int | None = None,
) -> None:
    """Serve the DashScope simulator (point DASHSCOPE_BASE_URL at http://HOST:PORT/api/v1)."""
    from pydantic import ValidationError

    from services.provider.simulator import SimConfig, serve

    flags = {"rate_per_s": "--rate", "latency_s": "--latency"}
    try:
        config = SimConfig(
            api_key=api_key,
            rate_per_s=rate,
            running_limit=running_limit,
            latency_s=latency,
            p_429=p_429,
            p_500=p_500,
            p_503=p_503,
            p_504=p_504,
            p_hang=p_hang,
            p_task_failed=p_task_failed,
            seed=seed,
        )
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = str(error["loc"][0])
            flag = flags.get(name, "--" + name.replace("_", "-"))
            problems.append(f"{flag}={error['input']}: {validation_message(error)}")
        raise typer.BadParameter("; ".join(problems)) from None
    settings()  # IMAGEGEN_LOG_FORMAT and IMAGEGEN_LOG_LEVEL hold here as for every command
    console.print(f"DashScope simulator on http://{host}:{port}/api/v1 (knobs: /_sim/config)")
    serve(config, host, port)
