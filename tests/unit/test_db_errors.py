"""Driver errors are translated at the edge: an outage is retryable, a bug is not."""

from __future__ import annotations

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
