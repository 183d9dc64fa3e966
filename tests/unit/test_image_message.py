"""The worker's reading of an image message: anything else on the work exchange is refused
with a reason before it takes a slot or reaches the database."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from services.broker.errors import Reject
from services.worker.message import ImageMessage

GOOD = {"task_id": "t-1", "index": 3, "image_id": 2**31 - 1, "dispatch": 0, "attempt": 3}


def test_a_message_the_relay_writes_is_read() -> None:
    assert ImageMessage.parse(json.dumps(GOOD).encode()) == ImageMessage("t-1", 3, 2**31 - 1, 0, 3)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"image_id": 2**70}, "image_id 1180591620717411303424 is not in 1..2147483647"),
        ({"image_id": 0}, "image_id 0 is not in 1..2147483647"),
        ({"index": 7}, "index 7 is not in 0..3"),
        ({"index": -1}, "index -1 is not in 0..3"),
        ({"dispatch": -5}, "dispatch -5 is not in 0..2147483647"),
        ({"attempt": 10**30}, "attempt 1000000000000000000000000000000 is not in 0..32767"),
        ({"attempt": True}, "attempt is not an integer"),
        ({"index": 1.0}, "index is not an integer"),
        ({"task_id": "x" * 65}, "task_id is not a task id"),
        ({"task_id": "../etc"}, "task_id is not a task id"),
        ({"task_id": 5}, "task_id is not a task id"),
        ({"attempt": None, "extra": 1}, "attempt is not an integer"),
    ],
)
def test_a_message_no_relay_writes_is_refused_with_the_reason(
    change: dict[str, Any], reason: str
) -> None:
    with pytest.raises(Reject, match=f"^{re.escape(f'invalid image message: {reason}')}$"):
        ImageMessage.parse(json.dumps(GOOD | change).encode())


@pytest.mark.parametrize("body", [b"[1]", b'{"task_id": "t-1"}', b"\xff", b'{"a": NaN}'])
def test_a_body_that_is_no_image_message_is_refused(body: bytes) -> None:
    with pytest.raises(Reject, match=r"^invalid image message: "):
        ImageMessage.parse(body)
