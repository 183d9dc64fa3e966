"""The root of every error the services package raises on purpose."""

from __future__ import annotations

from collections.abc import Mapping


class ImagegenError(Exception):
    """Something went wrong in imagegen."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.__doc__)


class ConfigError(ImagegenError):
    """The settings are invalid."""


class CannotListen(ImagegenError):
    """An HTTP server of the process could not listen on its address."""


def validation_message(error: Mapping[str, object]) -> str:
    """A pydantic error's text, without the "Value error, " pydantic puts before the text
    of a validator's own ``ValueError``."""
    return str(error["msg"]).removeprefix("Value error, ")
