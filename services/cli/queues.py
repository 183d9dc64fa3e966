"""Operator commands on the broker's side: queue depths with the provider slots in use,
and the dead queue, shown or sent back."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table
from rich.text import Text

from services.cli.common import app, console, execute, settings

if TYPE_CHECKING:
    from services.broker.dead import DeadMessage


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

        config = settings()
        topology = Topology(config.namespace, config.retry_ttl_scale)
        db = Database(config.database_url, size=1, overflow=0)
        probe = BrokerProbe(config.amqp_url)
        try:
            probe.connection = await connect(config.amqp_url, "imagegen-cli")
            await check_schema(db)
            running = await ProviderSlots(db, config.namespace, config.max_concurrent).running()
            depths = await probe.depths(topology.all_queues)
        finally:
            await db.close()
            if probe.connection is not None:
                await probe.connection.close()
        table = Table("queue", "messages")
        table.add_row("provider slots in use", f"{running}/{config.max_concurrent}")
        for name, n in depths.items():
            table.add_row(name, str(n))
        console.print(table)

    execute(show())


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

        config = settings()
        topology = Topology(config.namespace, config.retry_ttl_scale)
        connection = await connect(config.amqp_url, "imagegen-cli")
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

    execute(go())


def _show_dead(messages: list[DeadMessage], what: str) -> None:
    console.print(f"{len(messages)} {what}")
    if not messages:
        return
    table = Table("from", "routing key", "task", "reason")
    for m in messages:
        table.add_row(Text(m.origin), Text(m.routing_key), Text(m.task_id or "-"), Text(m.reason))
    console.print(table)
