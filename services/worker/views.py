"""The newest row this process has seen of each task its images are working on.

A task's images often run in one process at the same moment, and each writes the task
(the first to begin starts it, each one stores into it) with a compare-and-set on its
version. Racing, all but one would lose and write again. Here they take turns, each
starting from the row the one before left, so that only writers in other processes can
make a write lose. A view lives while one of its task's images is being handled, and its
row a while after: the slot goes back before the store, so a task's next image may be
claimed, reading the task, just before the image before it stores and leaves. Begun on
that read, with its view gone, it would lose its store to its own process.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager

from services.db.rows import ImageRow, TaskRow

RECENT = 512
"""Views kept after their last image is done, the oldest dropped first: more tasks than a
worker's prefetched messages name at once, at most a few megabytes with the longest prompts
and metadata the contract allows."""


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
    def __init__(self, recent: int = RECENT) -> None:
        self._views: dict[str, TaskView] = {}
        self._recent: OrderedDict[str, TaskView] = OrderedDict()
        self._keep = recent

    @contextmanager
    def of(self, task_id: str) -> Iterator[TaskView]:
        view = self._views.get(task_id)
        if view is None:
            view = self._recent.pop(task_id) if task_id in self._recent else TaskView()
            self._views[task_id] = view
        view.users += 1
        try:
            yield view
        finally:
            view.users -= 1
            if not view.users:
                del self._views[task_id]
                self._recent[task_id] = view
                if len(self._recent) > self._keep:
                    self._recent.popitem(last=False)

    def __len__(self) -> int:
        return len(self._views)
