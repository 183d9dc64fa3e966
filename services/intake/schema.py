"""The inbound payloads of CONTRACT.md §1, validated strictly, with one clear reason each."""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
)

from services.db.rows import NewTask

MAX_BODY_BYTES = 64 * 1024
MAX_PROMPT_CHARS = 2000
MAX_METADATA_BYTES = 4 * 1024
TASK_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,64}$"
_TASK_ID = re.compile(TASK_ID_PATTERN)
# C0 controls other than tab, newline and carriage return; NUL cannot even be stored.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")

TaskId = Annotated[str, StringConstraints(pattern=TASK_ID_PATTERN)]


class InvalidRequest(ValueError):
    """A message that breaks the contract; the text says which rule."""


def _check_text(value: str, name: str) -> str:
    if _CONTROL.search(value):
        raise ValueError(f"{name} contains control characters")
    return value


class TaskCreated(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    task_id: TaskId
    user_id: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    prompt: str
    image_count: int = Field(default=4, ge=1, le=4)
    metadata: dict[str, Any] | None = None

    def new_task(self, correlation_id: str | None = None) -> NewTask:
        return NewTask(
            id=self.task_id,
            user_id=self.user_id,
            prompt=self.prompt,
            image_count=self.image_count,
            meta=self.metadata,
            correlation_id=correlation_id,
        )

    @field_validator("user_id")
    @classmethod
    def _user_id(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("user_id is blank")
        return _check_text(value, "user_id")

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("prompt is blank")
        if len(value) > MAX_PROMPT_CHARS:
            raise ValueError(f"prompt is longer than {MAX_PROMPT_CHARS} characters ({len(value)})")
        return _check_text(value, "prompt")

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return None
        encoded = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        if len(encoded.encode()) > MAX_METADATA_BYTES:
            raise ValueError(f"metadata is larger than {MAX_METADATA_BYTES} bytes serialized")
        if "\\u0000" in encoded:
            raise ValueError("metadata contains NUL characters")
        return value


class TaskCancel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    task_id: TaskId
    reason: Annotated[str, StringConstraints(max_length=500)] | None = None

    @field_validator("reason")
    @classmethod
    def _reason(cls, value: str | None) -> str | None:
        return None if value is None else _check_text(value, "reason")


def decode(body: bytes) -> dict[str, Any]:
    """JSON object from a message body, or ``InvalidRequest`` saying what is wrong."""
    if len(body) > MAX_BODY_BYTES:
        raise InvalidRequest(f"message body is larger than {MAX_BODY_BYTES} bytes ({len(body)})")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"message body is not valid UTF-8 (byte {exc.start})") from None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise InvalidRequest(f"message body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidRequest(f"message body must be a JSON object, not {type(value).__name__}")
    return value


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
            message = str(error["msg"]).removeprefix("Value error, ")
            problems.append(f"{where}: {message}")
        raise InvalidRequest("; ".join(problems)) from None
