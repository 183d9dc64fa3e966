"""JSON shapes of the original front end: ``{success, data}``, camelCase task fields."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from services.db.rows import ImageRow, TaskRow


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def task_view(task: TaskRow, images: list[ImageRow]) -> dict[str, Any]:
    images = sorted(images, key=lambda i: i.index)
    return {
        "id": task.id,
        "userId": task.user_id,
        "prompt": task.prompt,
        "status": task.status.value,
        "createdAt": _iso(task.created_at),
        "imageGenerationStartedAt": _iso(task.image_generation_started_at),
        "imageGenerationCompletedAt": _iso(task.image_generation_completed_at),
        "failedAt": _iso(task.failed_at),
        "errorMessage": task.error_message,
        "images": [{"id": str(i.id), "url": i.url, "index": i.index} for i in images if i.url],
        "imageCount": task.image_count,
        "imagesReady": task.images_ready,
        "version": task.version,
        "metadata": task.meta,
        # What a polling front end shows while the provider throttles: the seed's "tell the
        # user the service is busy and retrying", which subscribers get as events.
        "retrying": [
            {"index": i.index, "attempt": i.attempts, "error": i.last_error}
            for i in images
            if task.active and not i.stored and i.attempts > 0
        ],
    }


def ok(data: Any, **extra: Any) -> dict[str, Any]:
    return {"success": True, "data": data, **extra}


def fail(error: str) -> dict[str, Any]:
    return {"success": False, "error": error}
