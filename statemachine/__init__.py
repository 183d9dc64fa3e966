"""The task lifecycle and the provider-error policy, as pure code with no I/O.

Everything here decides; nothing here acts. The services package persists what these
functions decide, so a decision can be tested by a table and replayed without a database.
"""

from statemachine.errors import IllegalTransition, StateMachineError
from statemachine.machine import TaskModel, Trigger, apply_trigger, can_fire
from statemachine.retry import (
    ErrorKind,
    FailNow,
    ProviderFailure,
    RetryLater,
    Transport,
    classify,
    decide,
    retry_delay_s,
)
from statemachine.states import ACTIVE_STATUSES, FINAL_STATUSES, TaskStatus

__all__ = [
    "ACTIVE_STATUSES",
    "FINAL_STATUSES",
    "ErrorKind",
    "FailNow",
    "IllegalTransition",
    "ProviderFailure",
    "RetryLater",
    "StateMachineError",
    "TaskModel",
    "TaskStatus",
    "Transport",
    "Trigger",
    "apply_trigger",
    "can_fire",
    "classify",
    "decide",
    "retry_delay_s",
]
