"""The root of every error the services package raises on purpose."""

from __future__ import annotations


class ImagegenError(Exception):
    """Something went wrong in imagegen."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.__doc__)


class ConfigError(ImagegenError):
    """The settings are invalid."""
