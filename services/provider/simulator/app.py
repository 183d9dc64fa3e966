"""The simulator's HTTP face: DashScope's paths, headers, bodies and codes, plus ``/_sim``
endpoints that tests and operators use to turn knobs and read counters."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import secrets
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from services import wire
from services.provider.simulator.engine import FAULTS, MODELS, Fault, SimTask, Simulator
from services.provider.simulator.png import png_for

_SIZE = re.compile(r"^\d{2,5}\*\d{2,5}$")
_SECRET = secrets.token_bytes(16)


def _rid() -> str:
    return str(uuid.uuid4())


def _error(
    status: int, code: str | None, message: str, retry_after_s: int | None = None
) -> Response:
    headers = None
    if retry_after_s is not None and (status == 429 or status >= 500):
        headers = {"Retry-After": str(retry_after_s)}
    if code is None:  # a gateway page, as DashScope's load balancer sends it
        return Response(message, status, headers, media_type="text/html")
    return JSONResponse({"request_id": _rid(), "code": code, "message": message}, status, headers)


def _invalid(message: str) -> Response:
    return _error(400, "InvalidParameter", message)


def _stamp(monotonic_at: float, sim: Simulator, task: SimTask) -> str:
    wall = task.submit_wall + (monotonic_at - task.submitted_at)
    return datetime.fromtimestamp(wall, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _signature(task_id: str, index: int, expires: int) -> str:
    message = f"{task_id}/{index}/{expires}".encode()
    return hmac.new(_SECRET, message, hashlib.sha256).hexdigest()[:32]


class SimulatorApp:
    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.app = Starlette(
            routes=[
                Route(
                    "/api/v1/services/aigc/text2image/image-synthesis",
                    self.submit,
                    methods=["POST"],
                ),
                Route("/api/v1/tasks/{task_id}", self.query, methods=["GET"]),
                Route("/api/v1/tasks/{task_id}/cancel", self.cancel, methods=["POST"]),
                Route("/_sim/images/{task_id}/{index:int}.png", self.image, methods=["GET"]),
                Route("/_sim/stats", self.stats, methods=["GET"]),
                Route("/_sim/config", self.get_config, methods=["GET"]),
                Route("/_sim/config", self.put_config, methods=["PUT"]),
                Route("/_sim/reset", self.reset, methods=["POST"]),
                Route("/_sim/requests", self.requests, methods=["GET"]),
            ]
        )

    def _authorized(self, request: Request) -> bool:
        expected = f"Bearer {self.sim.config.api_key}"
        return hmac.compare_digest(request.headers.get("authorization", ""), expected)

    async def submit(self, request: Request) -> Response:
        raw = await request.body()
        record: dict[str, Any] = {
            "path": request.url.path,
            "headers": {
                k: ("<redacted>" if k == "authorization" else v) for k, v in request.headers.items()
            },
            "auth_ok": self._authorized(request),
            "body": raw.decode("utf-8", "replace"),
        }
        self.sim.requests.append(record)
        if not record["auth_ok"]:
            return _error(401, "InvalidApiKey", "Invalid API-key provided.")
        if request.headers.get("x-dashscope-async") != "enable":
            return _error(
                403, "AccessDenied", "current user api does not support synchronous calls"
            )
        try:
            body = wire.loads(raw)
        except wire.BadJson:
            return _invalid("The request body is not valid JSON.")
        if not isinstance(body, dict):
            return _invalid("The request body must be a JSON object.")
        if body.get("model") not in MODELS:
            return _invalid("Model not exist.")
        given = body.get("input")
        prompt = given.get("prompt") if isinstance(given, dict) else None
        if not isinstance(prompt, str) or not prompt.strip():
            return _invalid("Field required: input.prompt")
        params = body.get("parameters") or {}
        if not isinstance(params, dict):
            return _invalid("parameters must be an object")
        n = params.get("n", 4)
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 4:
            return _invalid("Range of n should be [1, 4]")
        size = params.get("size", "1024*1024")
        if not isinstance(size, str) or not _SIZE.match(size):
            return _invalid("The size is not match the allowed size ['1024*1024', …]")
        decision = self.sim.submit(prompt, n)
        if decision.hang_s:
            await asyncio.sleep(decision.hang_s)
            return _error(504, None, "<html><body><h1>504 Gateway Time-out</h1></body></html>")
        if decision.fault is not None:
            fault: Fault = decision.fault
            return _error(fault.status, fault.code, fault.message, self.sim.config.retry_after_s)
        assert decision.task is not None
        if self.sim.config.answer_delay_s:
            await asyncio.sleep(self.sim.config.answer_delay_s)
        return JSONResponse(
            {
                "output": {"task_status": "PENDING", "task_id": decision.task.id},
                "request_id": _rid(),
            }
        )

    def _task_body(self, request: Request, task: SimTask) -> dict[str, Any]:
        sim = self.sim
        status = sim.status_of(task)
        output: dict[str, Any] = {"task_id": task.id, "task_status": status}
        if status == "UNKNOWN":
            return {"request_id": _rid(), "output": output}
        output["submit_time"] = _stamp(task.submitted_at, sim, task)
        if task.started_at is not None and status != "PENDING":
            output["scheduled_time"] = _stamp(task.started_at, sim, task)
        body: dict[str, Any] = {"request_id": _rid(), "output": output}
        if status in ("PENDING", "RUNNING", "CANCELED"):
            output["task_metrics"] = {"TOTAL": task.n, "SUCCEEDED": 0, "FAILED": 0}
            return body
        assert task.ends_at is not None
        output["end_time"] = _stamp(task.ends_at, sim, task)
        if status == "FAILED":
            if task.outcome == "failed_inspect":
                output["code"] = "DataInspectionFailed"
                output["message"] = "Output data may contain inappropriate content."
            else:
                output["code"] = "InternalError.Algo"
                output["message"] = "Algorithm process error."
            return body
        good = sim.succeeded_images(task)
        expires = int(time.time() + sim.config.url_ttl_s)
        base = str(request.base_url).rstrip("/")
        results: list[dict[str, Any]] = []
        for i in range(task.n):
            if i < good:
                sig = _signature(task.id, i, expires)
                url = f"{base}/_sim/images/{task.id}/{i}.png?Expires={expires}&Signature={sig}"
                results.append(
                    {"url": url, "orig_prompt": task.prompt, "actual_prompt": task.prompt}
                )
            else:
                results.append(
                    {
                        "code": "DataInspectionFailed",
                        "message": "Output data may contain inappropriate content.",
                    }
                )
        output["results"] = results
        output["task_metrics"] = {"TOTAL": task.n, "SUCCEEDED": good, "FAILED": task.n - good}
        body["usage"] = {"image_count": good}
        return body

    async def query(self, request: Request) -> Response:
        if not self._authorized(request):
            return _error(401, "InvalidApiKey", "Invalid API-key provided.")
        if self.sim.query_throttled():
            fault = FAULTS["429"]
            return _error(fault.status, fault.code, fault.message, self.sim.config.retry_after_s)
        task_id = request.path_params["task_id"]
        task = self.sim.find(task_id)
        if task is None:
            return JSONResponse(
                {"request_id": _rid(), "output": {"task_id": task_id, "task_status": "UNKNOWN"}}
            )
        return JSONResponse(self._task_body(request, task))

    async def cancel(self, request: Request) -> Response:
        if not self._authorized(request):
            return _error(401, "InvalidApiKey", "Invalid API-key provided.")
        if self.sim.cancel(request.path_params["task_id"]):
            return JSONResponse({"request_id": _rid()})
        return _error(
            400,
            "UnsupportedOperation",
            "Failed to cancel the task, please confirm if the task is in PENDING status.",
        )

    async def image(self, request: Request) -> Response:
        task_id, index = request.path_params["task_id"], request.path_params["index"]
        try:
            expires = int(request.query_params.get("Expires", ""))
        except ValueError:
            return Response("missing Expires", status_code=403)
        signature = request.query_params.get("Signature", "")
        if not hmac.compare_digest(signature, _signature(task_id, index, expires)):
            return Response("SignatureDoesNotMatch", status_code=403)
        if expires < time.time():
            return Response("Request has expired.", status_code=403)
        return Response(png_for(f"{task_id}/{index}"), media_type="image/png")

    async def stats(self, request: Request) -> Response:
        self.sim.advance()
        return JSONResponse(self.sim.stats.as_dict())

    async def get_config(self, request: Request) -> Response:
        return JSONResponse(self.sim.config.model_dump())

    async def put_config(self, request: Request) -> Response:
        try:
            changes = wire.loads(await request.body())
        except wire.BadJson as exc:
            return JSONResponse({"error": f"the body {exc}"}, 400)
        try:
            if not isinstance(changes, dict):
                raise ValueError("a JSON object is expected")
            config = self.sim.configure(changes)
        except (ValueError, ValidationError) as exc:
            return JSONResponse({"error": str(exc)}, 400)
        return JSONResponse(config.model_dump())

    async def reset(self, request: Request) -> Response:
        """``POST /_sim/reset`` forgets everything; ``?counters_only=true`` only zeroes counters."""
        if request.query_params.get("counters_only") == "true":
            self.sim.reset_counters()
        else:
            self.sim.reset()
        return JSONResponse({"reset": True})

    async def requests(self, request: Request) -> Response:
        return JSONResponse(list(self.sim.requests))


def build_app(sim: Simulator) -> Starlette:
    return SimulatorApp(sim).app
