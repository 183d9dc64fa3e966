"""Messages no valid producer sends: each must be parked in the dead queue with the
reason it was refused, and none may stop a consumer or hold up the valid tasks beside it."""

from __future__ import annotations

from typing import Any

Body = bytes | dict[str, Any]


def poison(conflict_id: str | None) -> list[tuple[str, Body]]:
    """Routing keys and bodies; ``conflict_id``, a task already created, is sent again with
    other content."""
    big = "x" * (1024 * 1024)
    messages: list[tuple[str, Body]] = [
        ("task.created", b"{not json"),
        ("task.created", b"\xff\xfe\x00garbage"),
        ("task.created", {"task_id": ["x"], "user_id": 1, "prompt": None}),
        ("task.created", {"task_id": "../../etc/passwd", "user_id": "u", "prompt": "p"}),
        ("task.created", {"task_id": "x'; DROP TABLE tasks;--", "user_id": "u", "prompt": "p"}),
        ("task.created", {"task_id": "nul-1", "user_id": "u", "prompt": "a\u0000b"}),
        ("task.created", {"task_id": "ctl-1", "user_id": "u", "prompt": "bell\u0007"}),
        ("task.created", {"task_id": "big-1", "user_id": "u", "prompt": big}),
        ("task.created", b"[" + b"1," * (5 * 1024 * 1024) + b"1]"),
        (
            "task.created",
            {"task_id": "meta-1", "user_id": "u", "prompt": "p", "metadata": {"blob": "y" * 5000}},
        ),
        ("task.created", b'{"task_id": "nan-1", "user_id": "u", "prompt": "p", "n": NaN}'),
        ("task.created", b'{"task_id": "sur-1", "user_id": "u", "prompt": "\\udc00"}'),
        ("task.created", b'{"task_id": "dup-1", "task_id": "dup-2", "user_id": "u"}'),
        ("task.created", b'{"metadata": ' + b"[" * 30_000 + b"]" * 30_000 + b"}"),
        ("task.mystery", {"task_id": "odd-1"}),
        ("task.cancel", {"task_id": 5}),
    ]
    if conflict_id is not None:
        conflict = {"task_id": conflict_id, "user_id": "someone-else", "prompt": "other content"}
        messages.append(("task.created", conflict))
    return messages
