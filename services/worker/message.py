"""The image message: what the relay sends for each image to generate (CONTRACT.md §3)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from services import wire
from services.broker.errors import Reject
from services.intake.schema import MAX_IMAGE_COUNT, is_task_id


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
        if not is_task_id(message.task_id):
            raise Reject("invalid image message: task_id is not a task id")
        for name, (low, high) in _RANGES.items():
            number = getattr(message, name)
            if not isinstance(number, int) or isinstance(number, bool):
                raise Reject(f"invalid image message: {name} is not an integer")
            if not low <= number <= high:
                # Outside the columns that hold it: the database would refuse the statement.
                raise Reject(f"invalid image message: {name} {number} is not in {low}..{high}")
        return message


_INT4 = 2**31 - 1
_RANGES = {
    "index": (0, MAX_IMAGE_COUNT - 1),
    "image_id": (1, _INT4),
    "dispatch": (0, _INT4),
    "attempt": (0, 2**15 - 1),
}
