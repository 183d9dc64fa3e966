"""The task lifecycle, defined once with the ``transitions`` library.

One ``Machine`` and one model serve every task: each decision sets the model to the task's
state and fires the trigger on it. Adding a model per decision would rebind every trigger
method onto it first, several times the cost of the decision itself.
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


@cache
def _decider() -> TaskModel:
    model = TaskModel(TaskStatus.PENDING)
    _machine().add_model(model, initial=model.status)
    return model


def apply_trigger(model: TaskModel, trigger: Trigger) -> TaskStatus:
    """Fire ``trigger`` on ``model`` and return its new status.

    Raises ``IllegalTransition`` naming the state and trigger when the trigger is not
    allowed; the model is then left unchanged. Decisions run one at a time (callbacks do
    no I/O, so nothing awaits in between); the shared model is not for several threads.
    """
    decider = _decider()
    decider.images_ready, decider.image_count = model.images_ready, model.image_count
    _machine().set_state(model.status, decider)
    try:
        getattr(decider, trigger.value)()
    except MachineError:
        raise IllegalTransition(model.status.value, trigger.value) from None
    model.status = decider.status
    return model.status


def can_fire(status: TaskStatus, trigger: Trigger) -> bool:
    """Whether ``trigger`` is allowed in ``status`` (conditions aside)."""
    return trigger.value in _machine().get_triggers(status)
