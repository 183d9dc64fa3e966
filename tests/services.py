"""Where the tests find PostgreSQL and RabbitMQ: the given URLs, the local defaults, or
(only when those are unreachable and a Docker engine answers) testcontainers."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlparse

DEFAULT_DATABASE_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"


@dataclass(frozen=True)
class ServiceUrls:
    database_url: str
    amqp_url: str


def _reachable(url: str, default_port: int) -> bool:
    parsed = urlparse(url.replace("postgresql+asyncpg", "postgresql"))
    try:
        with socket.create_connection(
            (parsed.hostname or "127.0.0.1", parsed.port or default_port), 2
        ):
            return True
    except OSError:
        return False


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env().ping()
    except Exception:
        return False
    return True


@contextlib.contextmanager
def service_urls() -> Iterator[ServiceUrls]:
    database_url = os.environ.get("IMAGEGEN_TEST_DATABASE_URL", DEFAULT_DATABASE_URL)
    amqp_url = os.environ.get("IMAGEGEN_TEST_AMQP_URL", DEFAULT_AMQP_URL)
    db_up, mq_up = _reachable(database_url, 5432), _reachable(amqp_url, 5672)
    if db_up and mq_up:
        yield ServiceUrls(database_url, amqp_url)
        return
    missing = [n for n, up in (("PostgreSQL", db_up), ("RabbitMQ", mq_up)) if not up]
    if os.environ.get("CI") == "true" or not _docker_answers():
        raise RuntimeError(
            f"{' and '.join(missing)} unreachable ({database_url}, {amqp_url}) and no Docker "
            "engine to start them: start the services or set IMAGEGEN_TEST_*_URL"
        )
    from testcontainers.postgres import PostgresContainer
    from testcontainers.rabbitmq import RabbitMqContainer

    with contextlib.ExitStack() as stack:
        if not db_up:
            pg = stack.enter_context(PostgresContainer("postgres:16", driver="asyncpg"))
            database_url = pg.get_connection_url()
        if not mq_up:
            mq = stack.enter_context(RabbitMqContainer("rabbitmq:3.13"))
            host, port = mq.get_container_host_ip(), mq.get_exposed_port(5672)
            amqp_url = f"amqp://guest:guest@{host}:{port}/"
        yield ServiceUrls(database_url, amqp_url)
