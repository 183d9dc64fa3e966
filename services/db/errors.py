"""Database errors, translated from the driver at the edge of this package."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import NoReturn

import asyncpg
from sqlalchemy import exc as sa_exc

from services.errors import ImagegenError


class RepositoryError(ImagegenError):
    """The database refused or failed an operation."""


class DatabaseUnavailable(RepositoryError):
    """PostgreSQL cannot be reached right now; the operation may succeed later."""


class LostRace(RepositoryError):
    """Another writer changed the task first; read again and decide again."""


# Worth retrying later: the server is away, restarting, full, or the transaction lost a
# conflict it may win next time. Anything else is a bug or bad data, and is not retried.
_UNAVAILABLE = (
    OSError,
    TimeoutError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InterfaceError,
    # A connection cut mid-statement can be left mid-protocol before asyncpg sees it closed.
    asyncpg.exceptions.InternalClientError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.DeadlockDetectedError,
)


def is_unavailable(exc: BaseException) -> bool:
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    # A pool timeout: every connection stayed busy for the pool's whole wait.
    if isinstance(exc, sa_exc.InterfaceError | sa_exc.OperationalError | sa_exc.TimeoutError):
        return True
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, _UNAVAILABLE):
            return True
        cause = cause.__cause__ or getattr(cause, "orig", None)
        if cause is exc:
            break
    return False


def unavailable(exc: BaseException) -> DatabaseUnavailable:
    """Names the root cause: the system's words for a network error ("Connection refused",
    "Name or service not known"), else its class. Never the driver's full text, which
    may carry the statement and its parameters."""
    root = exc
    while (cause := root.__cause__ or getattr(root, "orig", None)) is not None:
        if cause is exc:
            break
        root = cause
    why = root.__class__.__name__
    if isinstance(root, OSError):
        why = os.strerror(root.errno) if root.errno and root.errno > 0 else root.strerror or why
    return DatabaseUnavailable(f"database unavailable: {why}")


def raise_translated(exc: Exception) -> NoReturn:
    """Raise this package's error for a driver's ``exc``, or ``exc`` itself otherwise."""
    if isinstance(exc, RepositoryError) or not isinstance(
        exc,
        sa_exc.SQLAlchemyError
        | asyncpg.PostgresError
        | asyncpg.exceptions.InterfaceError
        | asyncpg.exceptions.InternalClientError
        | OSError
        | TimeoutError,
    ):
        raise exc
    if is_unavailable(exc):
        raise unavailable(exc) from exc
    raise RepositoryError(f"database error: {exc}") from exc


@asynccontextmanager
async def translated() -> AsyncIterator[None]:
    """Turn SQLAlchemy and asyncpg errors into this package's errors."""
    try:
        yield
    except Exception as exc:
        raise_translated(exc)
