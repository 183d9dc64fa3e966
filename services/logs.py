"""Structured logs: every line carries an ``action`` key, and task lines carry ``task_id``,
``image_index`` and ``attempt`` where they apply."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog
from structlog.typing import EventDict, Processor


def _action_of_library(_: Any, __: str, event_dict: EventDict) -> EventDict:
    event_dict.setdefault("action", "library")
    return event_dict


def setup_logging(level: str = "INFO", fmt: str = "console") -> None:
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    stamped: list[Processor] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    # The libraries' own lines (aio-pika reconnecting, uvicorn failing to bind) come out in
    # the same format as the service's, so a JSON log stays parseable line by line.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*stamped, structlog.stdlib.add_logger_name, _action_of_library],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    logging.basicConfig(level=level, handlers=[handler], force=True)
    # Library chatter (httpx request lines, aio-pika reconnect noise) stays at WARNING.
    for name in ("httpx", "aio_pika", "aiormq", "uvicorn.access", "transitions", "alembic"):
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            *stamped,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        # An uncached logger builds a bound logger and an output logger on every call,
        # even for a level filtered out: a few times per image. A process configures its
        # logs once, before its first line.
        cache_logger_on_first_use=True,
    )


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
