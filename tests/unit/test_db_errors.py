"""Driver errors are translated at the edge: an outage is retryable, a bug is not."""

from __future__ import annotations

import errno
import socket

import asyncpg
import pytest
from sqlalchemy import exc as sa_exc

from services.db.errors import DatabaseUnavailable, RepositoryError, translated


@pytest.mark.parametrize(
    "raised",
    [
        ConnectionResetError("reset"),
        TimeoutError(),
        asyncpg.exceptions.ConnectionDoesNotExistError("gone"),
        asyncpg.exceptions.AdminShutdownError(
            "terminating connection due to administrator command"
        ),
        asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
        asyncpg.exceptions.InterfaceError("connection is closed"),
        asyncpg.exceptions.SerializationError("could not serialize access"),
        sa_exc.TimeoutError("QueuePool limit of size 10 overflow 1 reached"),
    ],
)
async def test_an_outage_becomes_database_unavailable(raised: BaseException) -> None:
    with pytest.raises(DatabaseUnavailable):
        async with translated():
            raise raised


async def test_any_other_database_error_is_a_repository_error_but_not_an_outage() -> None:
    with pytest.raises(RepositoryError) as caught:
        async with translated():
            raise asyncpg.exceptions.UniqueViolationError("duplicate key")
    assert not isinstance(caught.value, DatabaseUnavailable)


def _wrapped(orig: BaseException) -> sa_exc.DBAPIError:
    return sa_exc.OperationalError("SELECT secret FROM t WHERE p = $1", ("a prompt",), orig)


@pytest.mark.parametrize(
    ("raised", "said"),
    [
        (
            ConnectionRefusedError(errno.ECONNREFUSED, "Connect call failed ('127.0.0.1', 5999)"),
            "Connection refused",
        ),
        (_wrapped(socket.gaierror(-2, "Name or service not known")), "Name or service not known"),
        (
            _wrapped(asyncpg.exceptions.CannotConnectNowError("starting up")),
            "CannotConnectNowError",
        ),
    ],
)
async def test_an_outage_names_its_root_cause_but_never_the_statement_or_address(
    raised: BaseException, said: str
) -> None:
    with pytest.raises(DatabaseUnavailable) as caught:
        async with translated():
            raise raised
    assert str(caught.value) == f"database unavailable: {said}"
