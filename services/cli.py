"""The ``imagegen`` command: run the service or one role, migrate, simulate, submit, inspect."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from services.aio import run
from services.config import Settings, load_settings
from services.errors import ImagegenError, validation_message
from services.logs import get_logger, setup_logging

if TYPE_CHECKING:
    from services.broker.dead import DeadMessage

app = typer.Typer(help="imagegen: reliable text-to-image tasks over RabbitMQ and PostgreSQL.")
console = Console()
log = get_logger("imagegen.cli")


def _settings() -> Settings:
    settings = load_settings()
    setup_logging(settings.log_level, settings.log_format)
    return settings


def _run(coro: Coroutine[Any, Any, Any]) -> Any:
    try:
        return run(coro)
    except ImagegenError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from None
    except (OSError, ConnectionError) as exc:
        console.print(f"[red]error:[/red] cannot connect: {escape(str(exc))}")
        raise typer.Exit(1) from None


async def _migrate(settings: Settings) -> None:
    from services.db import migrate as schema
    from services.db.engine import ensure_database

    if await ensure_database(settings.database_url):
        log.info("database created", action="migrate")
    if await schema.migrate(settings.database_url):
        log.info("migrations applied", action="migrate")


async def _serve(settings: Settings, roles: list[str], migrate: bool, demo: bool) -> None:
    from services.runtime import Role, run

    if migrate:
        await _migrate(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    ready = asyncio.Event()
    service = asyncio.create_task(
        run(settings, [Role(r) for r in roles], stop, lambda _: ready.set())
    )
    if demo:
        await asyncio.wait(
            [service, asyncio.create_task(ready.wait())], return_when=asyncio.FIRST_COMPLETED
        )
        if ready.is_set():
            from services.submit import task_created

            body = task_created("a cute cat wearing a tiny wizard hat", "demo", 4)
            with contextlib.suppress(typer.Exit):  # a failed demo task still leaves a service
                await _submit(settings, body, True, 120)
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
    settings = _settings()
    _run(_serve(settings, ["intake", "worker", "relay", "admin"], migrate, demo))


def _role_command(role: str, doc: str) -> None:
    def command() -> None:
        _run(_serve(_settings(), [role], False, False))

    command.__doc__ = doc
    app.command(role)(command)


_role_command("worker", "Run image workers only (scale these out).")
_role_command("intake", "Run the task.created / task.cancel consumer only.")
_role_command("relay", "Run the outbox relay and the reconciler only.")
_role_command("admin", "Run the admin HTTP probe only.")


@app.command()
def migrate() -> None:
    """Create the database if missing and apply every migration."""
    _run(_migrate(_settings()))


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
    _settings()  # IMAGEGEN_LOG_FORMAT and IMAGEGEN_LOG_LEVEL hold here as for every command
    console.print(f"DashScope simulator on http://{host}:{port}/api/v1 (knobs: /_sim/config)")
    serve(config, host, port)


async def _submit(settings: Settings, body: dict[str, Any], wait: bool, idle_s: float) -> None:
    from services.submit import follow, publish_request, watching

    task_id = body["task_id"]
    async with watching(settings) as (channel, queue):
        await publish_request(channel, settings, "task.created", body)
        console.print(f"submitted task [bold]{task_id}[/bold]")
        if not wait:
            return
        status = await follow(queue, task_id, body["image_count"], idle_s, console)
    if status is None:
        console.print(f"[yellow]no event for {idle_s:.0f} s; stopped waiting[/yellow]")
        raise typer.Exit(2)
    if status != "IMAGES_READY":
        raise typer.Exit(1)


def _task_id(value: str | None) -> str | None:
    """A task id the service can read, or a usage error: it answers a request about a task
    only when it can tell which task (everything else it judges, and says so in an event)."""
    from services.intake.schema import TASK_ID_PATTERN, is_task_id

    if value is not None and not is_task_id(value):
        raise typer.BadParameter(f"{value!r} does not match {TASK_ID_PATTERN}")
    return value


IdleTimeout = Annotated[float, typer.Option(min=0.1, help="Seconds to wait for the next event.")]


@app.command()
def submit(
    prompt: str,
    wait: Annotated[
        bool,
        typer.Option(
            help="Show progress until the task ends; exit 1 unless it ends IMAGES_READY, "
            "2 if no event comes for --timeout seconds."
        ),
    ] = False,
    user_id: str = "cli",
    image_count: Annotated[int, typer.Option(min=1, max=4)] = 4,
    task_id: Annotated[
        str | None,
        typer.Option(callback=_task_id, help="Your own id; sent again, it is the same task."),
    ] = None,
    metadata: Annotated[
        str | None, typer.Option(help="A JSON object, carried on every event of the task.")
    ] = None,
    timeout: IdleTimeout = 300,
) -> None:
    """Publish a task.created event, as another service would."""
    from services import wire
    from services.submit import task_created

    body = task_created(prompt, user_id, image_count, task_id)
    if metadata is not None:
        try:
            body["metadata"] = wire.loads(metadata.encode())
        except wire.BadJson as exc:
            raise typer.BadParameter(str(exc), param_hint="--metadata") from None
    _run(_submit(_settings(), body, wait, timeout))


@app.command()
def cancel(
    task_id: Annotated[str, typer.Argument(callback=_task_id)],
    reason: Annotated[str | None, typer.Option(help="Why, kept with the task.")] = None,
    timeout: IdleTimeout = 30,
) -> None:
    """Publish a task.cancel event, as another service would, and show the answer.

    Exit 0 if the task is cancelled, 1 if the cancel is refused, 2 if nothing answers."""

    async def request() -> None:
        from services.submit import cancel_answer

        body = {"task_id": task_id} | ({"reason": reason} if reason is not None else {})
        answer = await cancel_answer(_settings(), body, timeout)
        if answer is None:
            console.print(f"[yellow]no answer for {timeout:.0f} s; stopped waiting[/yellow]")
            raise typer.Exit(2)
        if answer["event_type"] == "task.status.cancelled":
            console.print(Text(f"task {task_id} cancelled"))
            return
        error = answer["error"]
        console.print(Text(f"cancel refused ({error['code']}): {error['message']}", style="red"))
        raise typer.Exit(1)

    _run(request())


@app.command()
def events(
    task_id: Annotated[
        str | None,
        typer.Option(callback=_task_id, help="Only this task's events, up to its last."),
    ] = None,
    key: Annotated[
        str, typer.Option(help="Which routing keys, as a binding pattern (task.status.*).")
    ] = "#",
    count: Annotated[int | None, typer.Option(min=1, help="Stop after this many.")] = None,
) -> None:
    """Print status events as they are published, one line each, until Ctrl+C."""

    async def watch() -> None:
        from services.submit import show_events, watching

        async with watching(_settings(), key) as (_, queue):
            console.print(Text(f"watching status events {key}"))
            await show_events(queue, console, task_id, count)

    with contextlib.suppress(KeyboardInterrupt):  # how a watch normally ends
        _run(watch())


@app.command()
def status(task_id: str) -> None:
    """Show one task and its images."""

    async def show() -> None:
        from services.admin.views import task_view
        from services.db.engine import Database
        from services.db.migrate import check_schema
        from services.db.repository import Repository

        db = Database(_settings().database_url, size=1, overflow=0)
        try:
            await check_schema(db)
            found = await Repository(db).get_task(task_id)
        finally:
            await db.close()
        if found is None:
            console.print(Text(f"no task {task_id}", style="red"))
            raise typer.Exit(1)
        show_task(console, task_view(*found))

    _run(show())


def show_task(out: Console, view: dict[str, Any]) -> None:
    """A task's fields as a table, then each image's URL whole on a line of its own: a
    table cuts a URL to the terminal's width, and a cut URL opens nothing. Values are
    text, never markup, since a prompt or a provider's message may hold ``[/b]``."""
    table = Table(show_header=False)
    for key, value in view.items():
        if key not in ("images", "retrying") and value not in (None, {}):
            table.add_row(key, Text(str(value)))
    out.print(table)
    for image in view["images"]:
        out.print(Text(f"image {image['index']}: {image['url']}"), soft_wrap=True)
    for retry in view["retrying"]:
        line = f"image {retry['index']} retrying after attempt {retry['attempt']}: {retry['error']}"
        out.print(Text(line), soft_wrap=True)


@app.command()
def queue() -> None:
    """Show the queue status: slots in use, queued, retrying and dead messages."""

    async def show() -> None:
        from services.admin.broker import BrokerProbe
        from services.broker.connection import connect
        from services.broker.topology import Topology
        from services.db.engine import Database
        from services.db.locks import ProviderSlots
        from services.db.migrate import check_schema

        settings = _settings()
        topology = Topology(settings.namespace, settings.retry_ttl_scale)
        db = Database(settings.database_url, size=1, overflow=0)
        probe = BrokerProbe(settings.amqp_url)
        try:
            probe.connection = await connect(settings.amqp_url, "imagegen-cli")
            await check_schema(db)
            running = await ProviderSlots(db, settings.namespace, settings.max_concurrent).running()
            depths = await probe.depths(topology.all_queues)
        finally:
            await db.close()
            if probe.connection is not None:
                await probe.connection.close()
        table = Table("queue", "messages")
        table.add_row("provider slots in use", f"{running}/{settings.max_concurrent}")
        for name, n in depths.items():
            table.add_row(name, str(n))
        console.print(table)

    _run(show())


@app.command()
def dead(
    limit: Annotated[int, typer.Option(min=1, help="At most this many, oldest first.")] = 20,
    replay: Annotated[
        bool,
        typer.Option(
            help="Send them back to the queue they came from (once their cause is fixed); "
            "one still bad is parked again."
        ),
    ] = False,
) -> None:
    """Show the dead queue: each parked message, where it came from and why."""

    async def go() -> None:
        from services.broker import dead as dead_queue
        from services.broker.connection import connect
        from services.broker.publisher import Publisher
        from services.broker.topology import Topology

        settings = _settings()
        topology = Topology(settings.namespace, settings.retry_ttl_scale)
        connection = await connect(settings.amqp_url, "imagegen-cli")
        async with connection:
            channel = await connection.channel()
            if not replay:
                _show_dead(await dead_queue.peek(channel, topology, limit), "parked")
                return
            publisher = Publisher(
                await connection.channel(publisher_confirms=True, on_return_raises=True)
            )
            sent, kept = await dead_queue.replay(channel, publisher, topology, limit)
            _show_dead(sent, "sent back")
            if kept:
                _show_dead(kept, "left in place: their queue takes nothing back")

    _run(go())


def _show_dead(messages: list[DeadMessage], what: str) -> None:
    console.print(f"{len(messages)} {what}")
    if not messages:
        return
    table = Table("from", "routing key", "task", "reason")
    for m in messages:
        table.add_row(Text(m.origin), Text(m.routing_key), Text(m.task_id or "-"), Text(m.reason))
    console.print(table)


def main() -> None:
    try:
        app()
    except ImagegenError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        sys.exit(1)
