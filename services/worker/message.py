"""The image message: what the relay sends for each image to generate (CONTRACT.md §3)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from services import wire
from services.broker.errors import Reject


@dataclass(frozen=True)
class ImageMessage:
    task_id: str
    index: int
    image_id: int
    dispatch: int
    """Which dispatch of the image this message is: an older one is a stale copy."""
    attempt: int

    @classmethod
    def parse(cls, body: bytes) -> ImageMessage:
        try:
            value: Any = wire.loads(body)
            message = cls(
                task_id=value["task_id"],
                index=value["index"],
                image_id=value["image_id"],
                dispatch=value["dispatch"],
                attempt=value["attempt"],
            )
        except (ValueError, TypeError, KeyError) as exc:
            raise Reject(f"invalid image message: {exc.__class__.__name__}: {exc}") from None
        if not isinstance(message.task_id, str) or not all(
            isinstance(v, int) and not isinstance(v, bool)
            for v in (message.index, message.image_id, message.dispatch, message.attempt)
        ):
            raise Reject("invalid image message: wrong field types")
        return message
