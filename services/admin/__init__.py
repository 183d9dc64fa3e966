"""The admin HTTP probe: health, readiness, metrics, queue status and the original /api routes."""
