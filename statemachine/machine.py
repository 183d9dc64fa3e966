"""The task lifecycle, defined once with the ``transitions`` library.

One ``Machine(model=None)`` serves every task: a model is added for the length of one
decision and removed again, which keeps a decision cheap and leaves no state behind.
Callbacks do no I/O because ``transitions`` does not undo a state change when a later
callback fails: callers decide here, in memory, then persist the outcome once.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from functools import cache

from transitions import Machine, MachineError

from statemachine.errors import IllegalTransition
from statemachine.states import TaskStatus


class Trigger(StrEnum):
    """The events that move a task."""

    START = "start"
    """The first image request is about to go to the provider."""
    STORE_IMAGE = "store_image"
    """One image was stored; the last one makes the images ready."""
    FAIL = "fail"
    """The task cannot finish (a non-retryable error, or retries exhausted)."""
    CANCEL = "cancel"
    """Someone asked to cancel before the images were ready."""
    START_MODEL = "start_model"
    """3D stage (reserved): a chosen image goes to model generation."""
    COMPLETE = "complete"
    """3D stage (reserved): the model is ready."""


S = TaskStatus

_TRANSITIONS: list[dict[str, object]] = [
    {"trigger": Trigger.START, "source": S.PENDING, "dest": S.GENERATING_IMAGES},
    # Condition order matters: the first transition whose conditions hold wins.
    {
        "trigger": Trigger.STORE_IMAGE,
        "source": S.GENERATING_IMAGES,
        "dest": S.IMAGES_READY,
        "conditions": "all_images_stored",
    },
    {"trigger": Trigger.STORE_IMAGE, "source": S.GENERATING_IMAGES, "dest": None},
    {
        "trigger": Trigger.FAIL,
        "source": [S.PENDING, S.GENERATING_IMAGES, S.GENERATING_MODEL],
        "dest": S.FAILED,
    },
    {"trigger": Trigger.CANCEL, "source": [S.PENDING, S.GENERATING_IMAGES], "dest": S.CANCELLED},
    {"trigger": Trigger.START_MODEL, "source": S.IMAGES_READY, "dest": S.GENERATING_MODEL},
    {"trigger": Trigger.COMPLETE, "source": S.GENERATING_MODEL, "dest": S.COMPLETED},
]


@dataclass
class TaskModel:
    """The little a decision needs to know about a task."""

    status: TaskStatus
    images_ready: int = 0
    """Images stored, counting the one a STORE_IMAGE trigger reports."""
    image_count: int = 4

    def all_images_stored(self) -> bool:
        return self.images_ready >= self.image_count


@cache
def _machine() -> Machine:
    return Machine(
        model=None,
        states=TaskStatus,
        transitions=_TRANSITIONS,
        initial=None,
        auto_transitions=False,
        model_attribute="status",
    )


def apply_trigger(model: TaskModel, trigger: Trigger) -> TaskStatus:
    """Fire ``trigger`` on ``model`` and return its new status.

    Raises ``IllegalTransition`` naming the state and trigger when the trigger is not
    allowed; the model is then left unchanged.
    """
    machine = _machine()
    machine.add_model(model, initial=model.status)
    try:
        getattr(model, trigger.value)()
    except MachineError:
        raise IllegalTransition(model.status.value, trigger.value) from None
    finally:
        machine.remove_model(model)
    return model.status


def can_fire(status: TaskStatus, trigger: Trigger) -> bool:
    """Whether ``trigger`` is allowed in ``status`` (conditions aside)."""
    return trigger.value in _machine().get_triggers(status)
