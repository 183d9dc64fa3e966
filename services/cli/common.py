"""What every ``imagegen`` command shares: the Typer app, the console, settings read once
with logging set from them, and one way to run a coroutine and report its failure."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from services.aio import run
from services.config import Settings, load_settings
from services.errors import ImagegenError
from services.logs import setup_logging

app = typer.Typer(help="imagegen: reliable text-to-image tasks over RabbitMQ and PostgreSQL.")
console = Console()


def settings() -> Settings:
    loaded = load_settings()
    setup_logging(loaded.log_level, loaded.log_format)
    return loaded


def execute(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a command's coroutine; a known failure is one red line and exit code 1."""
    try:
        return run(coro)
    except ImagegenError as exc:
        fail(str(exc))
    except (OSError, ConnectionError) as exc:
        fail(f"cannot connect: {exc}")


def fail(message: str) -> NoReturn:
    """One red line and exit code 1, inside a command or around the whole app."""
    console.print(f"[red]error:[/red] {escape(message)}")
    raise SystemExit(1) from None
