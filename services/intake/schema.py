"""The inbound payloads of CONTRACT.md §1, validated strictly, with one clear reason each."""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
)

from services import wire
from services.db.rows import NewTask
from services.errors import validation_message

MAX_BODY_BYTES = 64 * 1024
MAX_PROMPT_CHARS = 2000
MAX_IMAGE_COUNT = 4
MAX_METADATA_BYTES = 4 * 1024
TASK_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,64}$"
_TASK_ID = re.compile(TASK_ID_PATTERN)
# C0 controls other than tab, newline and carriage return; NUL cannot even be stored.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")

TaskId = Annotated[str, StringConstraints(pattern=TASK_ID_PATTERN)]


class InvalidRequest(ValueError):
    """A message that breaks the contract; the text says which rule. ``named`` holds the
    ``task_id`` and ``user_id`` a body that could not be read strictly still names."""

    def __init__(self, message: str, named: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.named = named or {}


def _check_text(value: str) -> str:
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters")
    return value


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return _check_text(value)


def _prompt(value: str) -> str:
    if len(value) > MAX_PROMPT_CHARS:
        raise ValueError(f"must be at most {MAX_PROMPT_CHARS} characters (it has {len(value)})")
    return _not_blank(value)


def _metadata(value: dict[str, Any] | None) -> dict[str, Any] | None:
    if value is None:
        return None
    encoded = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    if len(encoded.encode()) > MAX_METADATA_BYTES:
        raise ValueError(f"must be at most {MAX_METADATA_BYTES} bytes serialized")
    if "\\u0000" in encoded:
        raise ValueError("must not contain NUL characters")
    return value


# The rules of CONTRACT.md §1, shared with the admin API's POST /api/tasks.
Prompt = Annotated[str, AfterValidator(_prompt)]
UserId = Annotated[str, StringConstraints(min_length=1, max_length=128), AfterValidator(_not_blank)]
ImageCount = Annotated[int, Field(ge=1, le=MAX_IMAGE_COUNT)]
Metadata = Annotated[dict[str, Any] | None, AfterValidator(_metadata)]
Reason = Annotated[str, StringConstraints(max_length=500), AfterValidator(_check_text)]


class TaskCreated(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    task_id: TaskId
    user_id: UserId
    prompt: Prompt
    image_count: ImageCount = 4
    metadata: Metadata = None

    def new_task(self, correlation_id: str | None = None) -> NewTask:
        return NewTask(
            id=self.task_id,
            user_id=self.user_id,
            prompt=self.prompt,
            image_count=self.image_count,
            meta=self.metadata,
            correlation_id=correlation_id,
        )


class TaskCancel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    task_id: TaskId
    reason: Reason | None = None


def decode(body: bytes, what: str = "message body") -> dict[str, Any]:
    """JSON object from a body, or ``InvalidRequest`` saying what is wrong with ``what``."""
    if len(body) > MAX_BODY_BYTES:
        raise InvalidRequest(f"{what} is larger than {MAX_BODY_BYTES} bytes ({len(body)})")
    try:
        value = wire.loads(body)
    except wire.BadJson as exc:
        raise InvalidRequest(f"{what} {exc}", _named(body)) from None
    if not isinstance(value, dict):
        raise InvalidRequest(f"{what} must be a JSON object, not {type(value).__name__}")
    return value


class _Pairs(list[tuple[str, Any]]):
    """An object's members as read, repeats and all."""


def _named(body: bytes) -> dict[str, Any]:
    """The ids a body refused by the strict reading still names, read leniently, so that
    its sender hears of the rejection: one value each, never one of two that disagree."""
    try:
        pairs = json.loads(body, object_pairs_hook=_Pairs)
    except (ValueError, RecursionError):
        return {}
    if not isinstance(pairs, _Pairs):
        return {}
    named: dict[str, Any] = {}
    for key in ("task_id", "user_id"):
        values = {value for name, value in pairs if name == key and isinstance(value, str)}
        if len(values) == 1 and (value := values.pop()).isprintable():
            named[key] = value
    return named


def is_task_id(value: object) -> bool:
    """Whether ``value`` is a task id as the contract allows: 1 to 64 of [A-Za-z0-9._:-]."""
    return isinstance(value, str) and _TASK_ID.fullmatch(value) is not None


def usable_task_id(value: dict[str, Any]) -> str | None:
    """The ``task_id`` of a rejected message, when it is one we can name in an event."""
    task_id = value.get("task_id")
    return task_id if is_task_id(task_id) else None


M = TypeVar("M", bound=BaseModel)


def validate(model: type[M], value: dict[str, Any]) -> M:
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = ".".join(str(p) for p in error["loc"]) or "body"
            problems.append(f"{where}: {validation_message(error)}")
        raise InvalidRequest("; ".join(problems)) from None
