"""The ``imagegen`` command: run the service or one role, migrate, simulate, submit, inspect.

Each module registers its commands on the one Typer app as it is imported, so the order
of these imports is the order of ``imagegen --help``: running first, then tasks, then
the queues."""

from __future__ import annotations

# isort: off
from services.cli import serve, tasks, queues  # noqa: F401

# isort: on
from services.cli.common import app, fail
from services.errors import ImagegenError

__all__ = ["app", "main"]


def main() -> None:
    try:
        app()
    except ImagegenError as exc:
        fail(str(exc))
