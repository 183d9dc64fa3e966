"""Task statuses: the seven names of the public contract, in lifecycle order."""

from enum import StrEnum


class TaskStatus(StrEnum):
    """Where a task is in its life. The values are the wire names of CONTRACT.md."""

    PENDING = "PENDING"
    """Accepted and stored; no image has been requested from the provider yet."""
    GENERATING_IMAGES = "GENERATING_IMAGES"
    """At least one image request went to the provider; images are being stored."""
    IMAGES_READY = "IMAGES_READY"
    """Every image is stored; waiting for the (future) 3D stage."""
    GENERATING_MODEL = "GENERATING_MODEL"
    """Reserved for the 3D stage: a model is being generated from a chosen image."""
    COMPLETED = "COMPLETED"
    """Reserved for the 3D stage: the model is ready."""
    FAILED = "FAILED"
    """The task ended without its result; ``errorMessage`` says why."""
    CANCELLED = "CANCELLED"
    """Cancelled on request before its images were ready."""


#: Statuses in which images may still be requested and stored.
ACTIVE_STATUSES = frozenset({TaskStatus.PENDING, TaskStatus.GENERATING_IMAGES})

#: Statuses no trigger leaves (IMAGES_READY is not final: the 3D stage may follow it).
FINAL_STATUSES = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED})
