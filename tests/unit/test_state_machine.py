"""The whole (state, trigger) table: every legal move lands where it should, every other raises."""

from __future__ import annotations

import itertools

import pytest

from statemachine import (
    IllegalTransition,
    StateMachineError,
    TaskModel,
    TaskStatus,
    Trigger,
    apply_trigger,
    can_fire,
)

S, T = TaskStatus, Trigger

# (state, trigger) -> target, with two images of four stored before the trigger.
LEGAL: dict[tuple[TaskStatus, Trigger], TaskStatus] = {
    (S.PENDING, T.START): S.GENERATING_IMAGES,
    (S.PENDING, T.FAIL): S.FAILED,
    (S.PENDING, T.CANCEL): S.CANCELLED,
    (S.GENERATING_IMAGES, T.STORE_IMAGE): S.GENERATING_IMAGES,
    (S.GENERATING_IMAGES, T.FAIL): S.FAILED,
    (S.GENERATING_IMAGES, T.CANCEL): S.CANCELLED,
    (S.IMAGES_READY, T.START_MODEL): S.GENERATING_MODEL,
    (S.GENERATING_MODEL, T.COMPLETE): S.COMPLETED,
    (S.GENERATING_MODEL, T.FAIL): S.FAILED,
}

ALL_PAIRS = list(itertools.product(TaskStatus, Trigger))


@pytest.mark.parametrize(("state", "trigger"), ALL_PAIRS, ids=lambda v: str(v))
def test_every_state_and_trigger_pair_moves_as_the_table_says(
    state: TaskStatus, trigger: Trigger
) -> None:
    model = TaskModel(state, images_ready=2, image_count=4)
    if (state, trigger) in LEGAL:
        assert apply_trigger(model, trigger) is LEGAL[(state, trigger)]
        assert can_fire(state, trigger)
    else:
        with pytest.raises(IllegalTransition) as raised:
            apply_trigger(model, trigger)
        assert raised.value.state == state.value
        assert raised.value.trigger == trigger.value
        assert state.value in str(raised.value) and trigger.value in str(raised.value)
        assert model.status is state, "a refused trigger leaves the model as it was"
        assert not can_fire(state, trigger)


@pytest.mark.parametrize(
    ("stored", "count", "expected"),
    [
        (1, 1, S.IMAGES_READY),
        (1, 4, S.GENERATING_IMAGES),
        (3, 4, S.GENERATING_IMAGES),
        (4, 4, S.IMAGES_READY),
        (2, 2, S.IMAGES_READY),
    ],
)
def test_storing_the_last_image_makes_the_images_ready_and_not_before(
    stored: int, count: int, expected: TaskStatus
) -> None:
    model = TaskModel(S.GENERATING_IMAGES, images_ready=stored, image_count=count)
    assert apply_trigger(model, T.STORE_IMAGE) is expected


def test_illegal_transition_belongs_to_the_package_error_tree() -> None:
    assert issubclass(IllegalTransition, StateMachineError)


def test_statuses_are_the_seven_contract_names_in_order() -> None:
    assert [s.value for s in TaskStatus] == [
        "PENDING",
        "GENERATING_IMAGES",
        "IMAGES_READY",
        "GENERATING_MODEL",
        "COMPLETED",
        "FAILED",
        "CANCELLED",
    ]


def test_decisions_share_one_machine_model_and_leave_the_callers_models_plain() -> None:
    models = [TaskModel(S.PENDING) for _ in range(100)]
    for model in models:
        apply_trigger(model, T.START)
    assert all(m.status is S.GENERATING_IMAGES for m in models)
    assert not any(hasattr(m, T.START.value) for m in models), "no triggers bound to them"
    from statemachine.machine import _machine

    assert len(_machine().models) == 1
