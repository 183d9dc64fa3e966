"""Errors of the state machine package."""

from __future__ import annotations


class StateMachineError(Exception):
    """The task state machine refused a request."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.__doc__)


class IllegalTransition(StateMachineError):
    """A trigger was fired in a state that does not allow it."""

    def __init__(self, state: str, trigger: str) -> None:
        self.state = state
        self.trigger = trigger
        super().__init__(f"trigger {trigger!r} is not allowed in state {state}")
