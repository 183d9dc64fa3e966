"""A worker's per-task views: the newest row seen wins, and a caller's own image is its own."""

from __future__ import annotations

from dataclasses import replace

from services.db.rows import NewTask, new_rows
from services.worker.views import TaskViews
from statemachine import TaskStatus

TASK, IMAGES = new_rows(NewTask("t-1", "u-1", "a prompt", 2, None, None), [10, 11])


def test_a_view_offers_a_newer_row_seen_by_another_image_with_the_callers_own_image() -> None:
    views = TaskViews()
    with views.of("t-1") as first, views.of("t-1") as second:
        assert first is second
        later = replace(TASK, status=TaskStatus.GENERATING_IMAGES, version=3, images_ready=1)
        stored = [replace(IMAGES[0], url="u0"), replace(IMAGES[1], dispatch=0)]
        first.saw(later, stored)

        own = replace(IMAGES[1], dispatch=2)
        row, images = second.newest(TASK, IMAGES, own)
        assert row == later
        assert images == [stored[0], own], "the caller's image is never the view's older read"


def test_a_view_keeps_its_newer_row_over_an_older_one_and_over_nothing() -> None:
    views = TaskViews()
    with views.of("t-1") as view:
        newer = replace(TASK, version=5)
        view.saw(newer, IMAGES)
        view.saw(replace(TASK, version=4), [])
        view.saw(None, [])
        assert view.newest(TASK, IMAGES, IMAGES[0]) == (newer, IMAGES)
        assert view.newest(replace(TASK, version=6), [], IMAGES[0])[0].version == 6


def test_a_view_closes_with_its_last_image_and_its_row_serves_the_tasks_next_image() -> None:
    views = TaskViews()
    with views.of("t-1") as view:
        stored = replace(TASK, version=9)
        view.saw(stored, IMAGES)
        with views.of("t-2"):
            assert len(views) == 2
        assert len(views) == 1
    assert len(views) == 0
    with views.of("t-1") as later:
        assert later.newest(TASK, IMAGES, IMAGES[0]) == (stored, IMAGES), (
            "a claim read before the last store must not win over the store's row"
        )


def test_only_the_most_recently_closed_views_are_remembered() -> None:
    views = TaskViews(recent=2)
    for task_id in ("t-1", "t-2", "t-3"):
        with views.of(task_id) as view:
            view.saw(replace(TASK, id=task_id, version=9), IMAGES)
    with views.of("t-1") as oldest, views.of("t-3") as newest:
        assert oldest.newest(TASK, IMAGES, IMAGES[0]) == (TASK, IMAGES)
        assert newest.newest(TASK, IMAGES, IMAGES[0])[0].version == 9
