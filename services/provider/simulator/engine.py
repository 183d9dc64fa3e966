"""The simulated provider's state: tasks, limits, faults and counters, with no HTTP in it.

Task progress is computed lazily from a clock: each running slot frees at a known time, so
a query at any moment can tell which tasks have started and which have finished.
"""

from __future__ import annotations

import heapq
import itertools
import random
import re
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

MODELS = frozenset(
    {
        "wanx2.1-t2i-turbo",
        "wanx2.1-t2i-plus",
        "wan2.2-t2i-flash",
        "wan2.2-t2i-plus",
        "wanx2.0-t2i-turbo",
        "wan2.5-t2i-preview",
        "wanx-v1",
    }
)
PROMPT_LIMIT = 500
_MARKER = re.compile(r"\[sim:([A-Za-z0-9_.:]+?)(?:@([\d,]+))?\]")


class SimConfig(BaseModel):
    """Knobs, changeable at run time through ``PUT /_sim/config``."""

    model_config = ConfigDict(extra="forbid")
    """A misspelt knob is refused: ignored, it would leave a test running without its fault."""

    api_key: str = "sim-key"
    rate_per_s: float | None = Field(default=None, gt=0)
    """Submissions per second (token bucket); None lifts the limit."""
    burst: int | None = Field(default=None, ge=1)
    running_limit: int | None = Field(default=None, ge=1)
    """Provider tasks running at once; extra tasks wait as PENDING. None lifts the limit."""
    latency_s: float = Field(default=0.0, ge=0)
    """Running time per image."""
    p_429: float = Field(default=0.0, ge=0, le=1)
    p_500: float = Field(default=0.0, ge=0, le=1)
    p_503: float = Field(default=0.0, ge=0, le=1)
    p_504: float = Field(default=0.0, ge=0, le=1)
    p_hang: float = Field(default=0.0, ge=0, le=1)
    p_task_failed: float = Field(default=0.0, ge=0, le=1)
    p_unknown: float = Field(default=0.0, ge=0, le=1)
    p_query_429: float = Field(default=0.0, ge=0, le=1)
    """Chance that a query answers 429, as one over the account's 20 queries/s does."""
    retry_after_s: int | None = Field(default=None, ge=0)
    """Sent as ``Retry-After`` with every 429 and 5xx answer; DashScope documents none."""
    hang_s: float = Field(default=300.0, ge=0)
    answer_delay_s: float = Field(default=0.0, ge=0)
    """How long an accepted submit's answer takes: the task exists (and is billed) before
    the client learns its id."""
    url_ttl_s: float = Field(default=86400.0, gt=0)
    task_ttl_s: float = Field(default=86400.0, gt=0)
    """How long a task is kept after its submit: DashScope answers UNKNOWN for one older
    than 24 hours, and a long-running simulator need not hold every task it was sent."""
    seed: int | None = None


@dataclass
class Fault:
    """An HTTP error answer: status, code and message (``code`` None for a gateway page)."""

    status: int
    code: str | None
    message: str


FAULTS: dict[str, Fault] = {
    "429": Fault(
        429, "Throttling.RateQuota", "Requests rate limit exceeded, please try again later."
    ),
    "500": Fault(500, "InternalError", "An internal error has occured, please try again later."),
    "503": Fault(503, "ModelUnavailable", "Model is unavailable, please try again later."),
    "504": Fault(504, None, "<html><body><h1>504 Gateway Time-out</h1></body></html>"),
    "inspect": Fault(400, "DataInspectionFailed", "Input data may contain inappropriate content."),
    "ipinfringe": Fault(400, "IPInfringementSuspect", "Input data is suspected of infringement."),
    "arrearage": Fault(
        400, "Arrearage", "Access denied, please make sure your account is in good standing."
    ),
    "badkey": Fault(401, "InvalidApiKey", "Invalid API-key provided."),
    "denied": Fault(403, "AccessDenied", "Access denied."),
    "billoverdue": Fault(429, "PostpaidBillOverdue", "The bill is overdue; insufficient balance."),
}


@dataclass
class SimTask:
    id: str
    prompt: str
    n: int
    submitted_at: float
    submit_wall: float
    outcome: str = "ok"
    """ok, failed, failed_inspect, partial or unknown."""
    started_at: float | None = None
    ends_at: float | None = None
    cancelled: bool = False
    billed: bool = False


@dataclass
class Stats:
    submits: int = 0
    submits_by_prompt: Counter[str] = field(default_factory=Counter)
    errors_by_code: Counter[str] = field(default_factory=Counter)
    throttled: int = 0
    tasks_created: int = 0
    billed_images: int = 0
    billed_by_prompt: Counter[str] = field(default_factory=Counter)
    queries: int = 0
    queries_throttled: int = 0
    cancels: int = 0
    peak_running: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "submits": self.submits,
            "submits_by_prompt": dict(self.submits_by_prompt),
            "errors_by_code": dict(self.errors_by_code),
            "throttled": self.throttled,
            "tasks_created": self.tasks_created,
            "billed_images": self.billed_images,
            "billed_by_prompt": dict(self.billed_by_prompt),
            "queries": self.queries,
            "queries_throttled": self.queries_throttled,
            "cancels": self.cancels,
            "peak_running": self.peak_running,
        }


@dataclass
class SubmitDecision:
    """What a submit gets: a task, an error answer, or a hang."""

    task: SimTask | None = None
    fault: Fault | None = None
    hang_s: float = 0.0


def markers(prompt: str) -> list[tuple[str, set[int] | None]]:
    """``[sim:NAME]`` or ``[sim:NAME@2,3]`` (only on those submits of this prompt, 1-based)."""
    found = []
    for name, ordinals in _MARKER.findall(prompt):
        found.append((name, {int(o) for o in ordinals.split(",") if o} if ordinals else None))
    return found


class Simulator:
    def __init__(
        self, config: SimConfig | None = None, clock: Callable[[], float] = time.monotonic
    ):
        self.clock = clock
        self.config = config or SimConfig()
        self.reset()

    def reset_counters(self) -> None:
        """Zero the counters, keeping the tasks (and the running ones) as they are."""
        self.advance()
        self.stats = Stats()

    def reset(self) -> None:
        """Forget everything: tasks, counters, recorded requests."""
        self.stats = Stats()
        self.tasks: dict[str, SimTask] = {}
        self.requests: deque[dict[str, Any]] = deque(maxlen=200)
        self._pending: deque[SimTask] = deque()
        self._active_ends: list[float] = []
        self._unbilled: list[tuple[float, int, SimTask]] = []
        """Started tasks by end time: a heap, so settling costs nothing per finished task."""
        self._tokens = float(self._burst())
        self._refilled_at = self.clock()
        self._random = random.Random(self.config.seed)
        self._slots: list[float] = []
        self._rebuild_slots()
        self._ids = itertools.count(1)

    def configure(self, changes: dict[str, Any]) -> SimConfig:
        self.advance()
        before = (self.config.rate_per_s, self.config.burst)
        self.config = SimConfig.model_validate(self.config.model_dump() | changes)
        if (self.config.rate_per_s, self.config.burst) != before:
            self._tokens, self._refilled_at = float(self._burst()), self.clock()
        if "seed" in changes:
            self._random = random.Random(self.config.seed)
        self._rebuild_slots()
        return self.config

    def _burst(self) -> int:
        if self.config.rate_per_s is None:
            return 0
        return self.config.burst or max(1, round(self.config.rate_per_s))

    def _rebuild_slots(self) -> None:
        now = self.clock()
        limit = self.config.running_limit
        busy = sorted(t.ends_at for t in self.tasks.values() if t.ends_at and t.ends_at > now)
        self._slots = []
        if limit is not None:
            self._slots = busy[:limit] + [now] * max(0, limit - len(busy))
            heapq.heapify(self._slots)

    # -- submissions --------------------------------------------------------------------

    def _take_token(self) -> bool:
        rate = self.config.rate_per_s
        if rate is None:
            return True
        now = self.clock()
        self._tokens = min(float(self._burst()), self._tokens + (now - self._refilled_at) * rate)
        self._refilled_at = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False

    def _chance(self, p: float) -> bool:
        return p > 0 and self._random.random() < p

    def submit(self, prompt: str, n: int) -> SubmitDecision:
        """Decide a valid submit's fate; validation of the request happened before."""
        self.advance()
        self.stats.submits += 1
        self.stats.submits_by_prompt[prompt] += 1
        ordinal = self.stats.submits_by_prompt[prompt]
        active = [name for name, only in markers(prompt) if only is None or ordinal in only]
        cfg = self.config
        outcome = "ok"
        for name in active:
            if name == "hang":
                return SubmitDecision(hang_s=cfg.hang_s)
            if name.startswith("error:"):
                _, status, code = [*name.split(":", 2), "", ""][:3]
                return self._fail(Fault(int(status), code or None, f"simulated {code or status}"))
            if name in FAULTS:
                return self._fail(FAULTS[name])
            if name in ("fail", "failinspect", "partial", "unknown"):
                outcome = {"fail": "failed", "failinspect": "failed_inspect"}.get(name, name)
        if not self._take_token():
            return self._fail(FAULTS["429"])
        for p, key in (
            (cfg.p_429, "429"),
            (cfg.p_500, "500"),
            (cfg.p_503, "503"),
            (cfg.p_504, "504"),
        ):
            if self._chance(p):
                return self._fail(FAULTS[key])
        if self._chance(cfg.p_hang):
            return SubmitDecision(hang_s=cfg.hang_s)
        if outcome == "ok" and self._chance(cfg.p_task_failed):
            outcome = "failed"
        if outcome == "ok" and self._chance(cfg.p_unknown):
            outcome = "unknown"
        # [sim:longid]: a task whose id is too long to be stored (a malformed answer).
        long_id = "-" + "0" * 120 if "longid" in active else ""
        task = SimTask(
            id=f"sim-{uuid.uuid4()}{long_id}",
            prompt=prompt[:PROMPT_LIMIT],
            n=n,
            submitted_at=self.clock(),
            submit_wall=time.time(),
            outcome=outcome,
        )
        self.tasks[task.id] = task
        self._pending.append(task)
        self.stats.tasks_created += 1
        self.advance()
        return SubmitDecision(task=task)

    def _fail(self, fault: Fault) -> SubmitDecision:
        self.stats.errors_by_code[fault.code or str(fault.status)] += 1
        if fault.code and fault.code.startswith("Throttling"):
            self.stats.throttled += 1
        return SubmitDecision(fault=fault)

    # -- progress -----------------------------------------------------------------------

    def advance(self) -> None:
        """Start waiting tasks on free slots and settle finished ones, up to now."""
        now = self.clock()
        limit = self.config.running_limit
        while self._pending:
            task = self._pending[0]
            if task.cancelled:
                self._pending.popleft()
                continue
            if limit is None:
                start = task.submitted_at
            else:
                free_at = self._slots[0]
                if free_at > now:
                    break
                start = max(free_at, task.submitted_at)
            self._pending.popleft()
            task.started_at = start
            task.ends_at = start + self.config.latency_s * task.n
            if limit is not None:
                heapq.heapreplace(self._slots, task.ends_at)
            heapq.heappush(self._unbilled, (task.ends_at, id(task), task))
            self._active_ends = [e for e in self._active_ends if e > start] + [task.ends_at]
            self.stats.peak_running = max(self.stats.peak_running, len(self._active_ends))
        while self._unbilled and self._unbilled[0][0] <= now:
            _, _, task = heapq.heappop(self._unbilled)
            task.billed = True
            images = self.succeeded_images(task)
            self.stats.billed_images += images
            self.stats.billed_by_prompt[task.prompt] += images
        self._forget_expired(now)

    def _forget_expired(self, now: float) -> None:
        """Forget tasks past ``task_ttl_s``, oldest first (``tasks`` keeps submit order). One
        still waiting for a slot is kept until it starts, and the ones behind it with it."""
        horizon = now - self.config.task_ttl_s
        while self.tasks:
            oldest = next(iter(self.tasks.values()))
            if oldest.submitted_at > horizon or (
                oldest.started_at is None and not oldest.cancelled
            ):
                return
            del self.tasks[oldest.id]

    def succeeded_images(self, task: SimTask) -> int:
        if task.outcome in ("failed", "failed_inspect", "unknown"):
            return 0
        return task.n - 1 if task.outcome == "partial" else task.n

    def status_of(self, task: SimTask) -> str:
        if task.outcome == "unknown":
            return "UNKNOWN"
        if task.cancelled:
            return "CANCELED"
        now = self.clock()
        if task.started_at is None or task.started_at > now:
            return "PENDING"
        assert task.ends_at is not None
        if task.ends_at > now:
            return "RUNNING"
        return "FAILED" if task.outcome in ("failed", "failed_inspect") else "SUCCEEDED"

    def query_throttled(self) -> bool:
        """Whether this query is over the account's query rate (``p_query_429``)."""
        throttled = self._chance(self.config.p_query_429)
        self.stats.queries_throttled += throttled
        return throttled

    def find(self, task_id: str) -> SimTask | None:
        self.advance()
        self.stats.queries += 1
        return self.tasks.get(task_id)

    def cancel(self, task_id: str) -> bool:
        self.advance()
        task = self.tasks.get(task_id)
        if task is None or self.status_of(task) != "PENDING":
            return False
        task.cancelled = True
        self.stats.cancels += 1
        return True
