"""The admin HTTP probe, built by a factory whose lifespan owns (or borrows) its I/O."""

from __future__ import annotations

import hmac
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, Gauge, generate_latest
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.admin.broker import BrokerProbe
from services.admin.views import fail, ok, task_view
from services.broker.errors import BrokerUnavailable
from services.broker.topology import Topology
from services.config import Settings
from services.db.engine import Database
from services.db.errors import DatabaseUnavailable, RepositoryError
from services.db.locks import ProviderSlots
from services.db.repository import Repository
from services.db.rows import NewTask
from services.errors import validation_message
from services.events import Events
from services.intake.commands import CancelOutcome, Conflict, cancel_task, create_task
from services.intake.schema import (
    MAX_BODY_BYTES,
    ImageCount,
    InvalidRequest,
    Metadata,
    Prompt,
    UserId,
    decode,
    is_task_id,
)
from services.logs import get_logger

log = get_logger("imagegen.admin")
_TOO_LARGE = f"request body larger than {MAX_BODY_BYTES} bytes"

TASKS_BY_STATUS = Gauge(
    "imagegen_tasks",
    "Tasks with work ahead, by status (finished ones: imagegen_tasks_finished_total)",
    ["status"],
)
OUTBOX_ROWS = Gauge("imagegen_outbox_rows", "Outbox rows not yet published")
OUTBOX_LAG = Gauge("imagegen_outbox_lag_seconds", "Age of the oldest unpublished outbox row")
QUEUE_DEPTH = Gauge("imagegen_queue_messages", "Ready messages per queue", ["queue"])


@dataclass
class AdminDeps:
    settings: Settings
    repo: Repository
    slots: ProviderSlots
    events: Events
    topology: Topology
    broker: BrokerProbe


class CreateTaskBody(BaseModel):
    # Strict, as task.created is: lax, {"imageCount": true} asked for one image.
    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: Prompt
    userId: UserId = "anonymous"
    imageCount: ImageCount = 4
    metadata: Metadata = None


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message


def _deps(request: Request) -> AdminDeps:
    deps: AdminDeps = request.app.state.deps
    return deps


Deps = Annotated[AdminDeps, Depends(_deps)]


def _authorized(request: Request, deps: Deps) -> None:
    token = deps.settings.admin_token
    if token is None:
        return
    # Compared as bytes: compare_digest refuses str with non-ASCII characters (a 500 for
    # anyone who sends one), and Starlette hands the header over decoded as latin-1.
    # The scheme is case-insensitive (RFC 9110), so "bearer" is as good as "Bearer".
    scheme, _, sent = request.headers.get("authorization", "").partition(" ")
    expected = token.get_secret_value().encode()
    if scheme.lower() != "bearer" or not hmac.compare_digest(sent.encode("latin-1"), expected):
        raise ApiError(401, "Unauthorized: a valid bearer token is required")


async def _body(request: Request) -> bytes:
    """The request body, read no further than the limit: a chunked body has no length for
    the middleware to check."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ApiError(413, _TOO_LARGE)
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(settings: Settings, deps: AdminDeps | None = None) -> FastAPI:
    """The app. ``deps`` are borrowed from a running service; without them the lifespan
    builds its own engine and broker connection."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            own = deps
            if own is None:
                db = Database(settings.database_url, size=5, overflow=5)
                stack.push_async_callback(db.close)
                topology = Topology(settings.namespace, settings.retry_ttl_scale)
                broker = BrokerProbe(settings.amqp_url)
                broker.start()
                stack.push_async_callback(broker.close)
                own = AdminDeps(
                    settings,
                    Repository(db),
                    ProviderSlots(db, settings.namespace, settings.max_concurrent),
                    Events(topology),
                    topology,
                    broker,
                )
            app.state.deps = own
            yield

    app = FastAPI(title="imagegen admin", version="0.1.0", lifespan=lifespan)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(fail(exc.message), exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for error in exc.errors():
            where = ".".join(str(p) for p in error["loc"] if p != "body") or "body"
            problems.append(f"{where}: {validation_message(error)}")
        return JSONResponse(fail("; ".join(problems)), 400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(fail(str(exc.detail)), exc.status_code)

    @app.exception_handler(DatabaseUnavailable)
    async def db_unavailable(request: Request, exc: DatabaseUnavailable) -> JSONResponse:
        return JSONResponse(fail(str(exc)), 503)

    @app.exception_handler(RepositoryError)
    async def db_error(request: Request, exc: RepositoryError) -> JSONResponse:
        # The database answered and refused: not an outage, and its words stay in the log.
        log.error("database error", action="admin_db_error", path=request.url.path, error=str(exc))
        return JSONResponse(fail("database error: see the service's log"), 500)

    @app.exception_handler(BrokerUnavailable)
    async def mq_error(request: Request, exc: BrokerUnavailable) -> JSONResponse:
        return JSONResponse(fail(str(exc)), 503)

    @app.middleware("http")
    async def limit_body(request: Request, call_next: Any) -> Response:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            return JSONResponse(fail(_TOO_LARGE), 413)
        response: Response = await call_next(request)
        return response

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(deps: Deps) -> JSONResponse:
        checks: dict[str, str] = {}
        try:
            await deps.repo.ping()
            checks["postgresql"] = "ok"
        except RepositoryError as exc:
            checks["postgresql"] = f"unavailable: {exc}"
        try:
            await deps.broker.check(deps.topology)
            checks["rabbitmq"] = "ok"
        except BrokerUnavailable as exc:
            checks["rabbitmq"] = f"unavailable: {exc}"
        ready = all(v == "ok" for v in checks.values())
        return JSONResponse(
            {"status": "ready" if ready else "not ready", "checks": checks}, 200 if ready else 503
        )

    @app.get("/metrics")
    async def metrics_endpoint(deps: Deps) -> Response:
        try:
            counts = await deps.repo.counts()
            for status, n in counts.by_status.items():
                TASKS_BY_STATUS.labels(status).set(n)
            OUTBOX_ROWS.set(counts.outbox_rows)
            OUTBOX_LAG.set(counts.outbox_oldest_s)
        except RepositoryError:
            pass  # the process metrics are still worth serving
        try:
            for name, n in (await deps.broker.depths(deps.topology.all_queues)).items():
                QUEUE_DEPTH.labels(name).set(n)
        except BrokerUnavailable:
            pass
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    async def queue_summary(deps: AdminDeps) -> dict[str, int]:
        return {
            "running": await deps.slots.running(),
            "maxConcurrent": deps.settings.max_concurrent,
        }

    @app.get("/api/queue/status", dependencies=[Depends(_authorized)])
    async def queue_status(deps: Deps) -> dict[str, Any]:
        topology = deps.topology
        retry_names = [q.name for q in topology.retry_queues]
        depths = await deps.broker.depths(
            [topology.images_queue, topology.dead_queue, *retry_names]
        )
        return ok(
            {
                **await queue_summary(deps),
                "queued": depths[topology.images_queue],
                "retrying": sum(depths[name] for name in retry_names),
                "dead": depths[topology.dead_queue],
            }
        )

    @app.post("/api/tasks", status_code=201, dependencies=[Depends(_authorized)])
    async def create(request: Request, deps: Deps) -> dict[str, Any]:
        try:
            raw = decode(await _body(request), "request body")
        except InvalidRequest as exc:
            raise ApiError(400, str(exc)) from None
        try:
            body = CreateTaskBody.model_validate(raw)
        except ValidationError as exc:
            raise RequestValidationError(exc.errors()) from None
        new = NewTask(
            id=f"t-{uuid.uuid4().hex}",
            user_id=body.userId,
            prompt=body.prompt,
            image_count=body.imageCount,
            meta=body.metadata,
        )
        try:
            created = await create_task(deps.repo, deps.events, new, deps.slots)
        except Conflict as exc:
            raise ApiError(409, str(exc)) from None
        return ok(task_view(created.task, []), queue=await queue_summary(deps))

    @app.get("/api/tasks/{task_id}", dependencies=[Depends(_authorized)])
    async def get_task(task_id: str, deps: Deps) -> dict[str, Any]:
        if not is_task_id(task_id):
            raise ApiError(404, "Task not found")
        found = await deps.repo.get_task(task_id)
        if found is None:
            raise ApiError(404, "Task not found")
        return ok(task_view(*found))

    @app.post("/api/tasks/{task_id}/cancel", dependencies=[Depends(_authorized)])
    async def cancel(task_id: str, deps: Deps) -> dict[str, Any]:
        if not is_task_id(task_id):
            raise ApiError(404, "Task not found")
        result = await cancel_task(
            deps.repo, deps.events, task_id, "cancelled through the admin API"
        )
        if result.outcome is CancelOutcome.NOT_FOUND:
            raise ApiError(404, "Task not found")
        if result.outcome is CancelOutcome.NOT_CANCELLABLE:
            raise ApiError(409, "Task cannot be cancelled (already completed)")
        return {"success": True, "message": "Task cancelled"}

    return app
