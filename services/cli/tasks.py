"""Commands that act as another service would: create or cancel a task, watch its events,
and show one task as stored."""

from __future__ import annotations

import contextlib
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from services.cli.common import app, console, execute, settings
from services.config import Settings


async def submit_and_follow(
    config: Settings, body: dict[str, Any], wait: bool, idle_s: float
) -> None:
    from services.cli.producer import follow, publish_request, watching

    task_id = body["task_id"]
    async with watching(config) as (channel, queue):
        await publish_request(channel, config, "task.created", body)
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
    from services.cli.producer import task_created

    body = task_created(prompt, user_id, image_count, task_id)
    if metadata is not None:
        try:
            body["metadata"] = wire.loads(metadata.encode())
        except wire.BadJson as exc:
            raise typer.BadParameter(str(exc), param_hint="--metadata") from None
    execute(submit_and_follow(settings(), body, wait, timeout))


@app.command()
def cancel(
    task_id: Annotated[str, typer.Argument(callback=_task_id)],
    reason: Annotated[str | None, typer.Option(help="Why, kept with the task.")] = None,
    timeout: IdleTimeout = 30,
) -> None:
    """Publish a task.cancel event, as another service would, and show the answer.

    Exit 0 if the task is cancelled, 1 if the cancel is refused, 2 if nothing answers."""

    async def request() -> None:
        from services.cli.producer import cancel_answer

        body = {"task_id": task_id} | ({"reason": reason} if reason is not None else {})
        answer = await cancel_answer(settings(), body, timeout)
        if answer is None:
            console.print(f"[yellow]no answer for {timeout:.0f} s; stopped waiting[/yellow]")
            raise typer.Exit(2)
        if answer["event_type"] == "task.status.cancelled":
            console.print(Text(f"task {task_id} cancelled"))
            return
        error = answer["error"]
        console.print(Text(f"cancel refused ({error['code']}): {error['message']}", style="red"))
        raise typer.Exit(1)

    execute(request())


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
        from services.cli.producer import show_events, watching

        async with watching(settings(), key) as (_, queue):
            console.print(Text(f"watching status events {key}"))
            await show_events(queue, console, task_id, count)

    with contextlib.suppress(KeyboardInterrupt):  # how a watch normally ends
        execute(watch())


@app.command()
def status(task_id: str) -> None:
    """Show one task and its images."""

    async def show() -> None:
        from services.admin.views import task_view
        from services.db.engine import Database
        from services.db.migrate import check_schema
        from services.db.repository import Repository

        db = Database(settings().database_url, size=1, overflow=0)
        try:
            await check_schema(db)
            found = await Repository(db).get_task(task_id)
        finally:
            await db.close()
        if found is None:
            console.print(Text(f"no task {task_id}", style="red"))
            raise typer.Exit(1)
        show_task(console, task_view(*found))

    execute(show())


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
