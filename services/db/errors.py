"""Database errors, translated from the driver at the edge of this package."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from sqlalchemy import exc as sa_exc

from services.errors import ImagegenError


class RepositoryError(ImagegenError):
    """The database refused or failed an operation."""


class DatabaseUnavailable(RepositoryError):
    """PostgreSQL cannot be reached right now; the operation may succeed later."""


class LostRace(RepositoryError):
    """Another writer changed the task first; read again and decide again."""


_UNAVAILABLE = (
    OSError,
    TimeoutError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.TooManyConnectionsError,
)


def _is_unavailable(exc: BaseException) -> bool:
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, _UNAVAILABLE):
            return True
        cause = cause.__cause__ or getattr(cause, "orig", None)
        if cause is exc:
            break
    return False


@asynccontextmanager
async def translated() -> AsyncIterator[None]:
    """Turn SQLAlchemy and asyncpg errors into this package's errors."""
    try:
        yield
    except RepositoryError:
        raise
    except (sa_exc.SQLAlchemyError, asyncpg.PostgresError, OSError, TimeoutError) as exc:
        if _is_unavailable(exc):
            raise DatabaseUnavailable(f"database unavailable: {exc.__class__.__name__}") from exc
        raise RepositoryError(f"database error: {exc}") from exc
