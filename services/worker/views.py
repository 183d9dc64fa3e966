"""The newest row this process has seen of each task its images are working on.

A task's images often run in one process at the same moment, and each writes the task
(the first to begin starts it, each one stores into it) with a compare-and-set on its
version. Racing, all but one would lose and write again. Here they take turns, each
starting from the row the one before left, so that only writers in other processes can
make a write lose. A view lives while one of its task's images is being handled.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

from services.db.rows import ImageRow, TaskRow


class TaskView:
    def __init__(self) -> None:
        self.turn = asyncio.Lock()
        """Held by the image writing the task: the others of this process wait for it."""
        self._row: TaskRow | None = None
        self._images: list[ImageRow] = []
        self.users = 0

    def newest(
        self, row: TaskRow, images: list[ImageRow], own: ImageRow
    ) -> tuple[TaskRow, list[ImageRow]]:
        """``row`` and ``images``, or what this process saw later. Versions only grow, so
        the higher one is the newer. ``own`` (the caller's image, which it holds) always
        comes from the caller: a view may hold an older read of it."""
        if self._row is None or self._row.version <= row.version:
            return row, images
        return self._row, [own if i.index == own.index else i for i in self._images]

    def saw(self, row: TaskRow | None, images: list[ImageRow]) -> None:
        """Remember ``row``, with ``images`` as the writer knew them. They may be behind
        the row (an image stored by another process): the last image's writer compares
        the stored count with ``images_ready`` and reads again when they differ."""
        if row is not None and (self._row is None or row.version >= self._row.version):
            self._row, self._images = row, images


class TaskViews:
    def __init__(self) -> None:
        self._views: dict[str, TaskView] = {}

    @contextmanager
    def of(self, task_id: str) -> Iterator[TaskView]:
        view = self._views.get(task_id)
        if view is None:
            view = self._views[task_id] = TaskView()
        view.users += 1
        try:
            yield view
        finally:
            view.users -= 1
            if not view.users:
                del self._views[task_id]

    def __len__(self) -> int:
        return len(self._views)
