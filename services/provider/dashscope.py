"""An async client for DashScope text-to-image (the legacy async protocol).

Submit and poll are separate calls on purpose: the pipeline stores the provider task id
between them, so a retry after a crash or an ambiguous failure polls the task it already
paid for instead of submitting (and paying) again.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Any

import httpx
from pydantic import SecretStr
from yarl import URL

from services.provider.errors import (
    ProviderConnectError,
    ProviderHTTPError,
    ProviderPollTimeout,
    ProviderTimeout,
    ProviderTransportError,
)
from services.provider.polling import Pacer, PollPlanner
from services.provider.transport import ProviderTransport, Reply

SUBMIT_PATH = "/services/aigc/text2image/image-synthesis"
MAX_TASK_ID_LENGTH = 128
"""The longest provider task id the database stores (``task_images.provider_task_id``)."""
RETRY_AFTER_CAP_S = 120.0
"""The longest a ``Retry-After`` holds a poll back: the longest retry tier."""
_DELTA_SECONDS = re.compile(r"[0-9]{1,9}")


class ProviderTaskStatus(StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELED = "CANCELED"
    UNKNOWN = "UNKNOWN"

    @property
    def terminal(self) -> bool:
        return self not in (ProviderTaskStatus.PENDING, ProviderTaskStatus.RUNNING)


@dataclass(frozen=True)
class SubmitResult:
    task_id: str
    status: ProviderTaskStatus
    request_id: str | None


@dataclass(frozen=True)
class ResultEntry:
    """One requested image: a URL, or the code and message of its failure."""

    url: str | None
    code: str | None = None
    message: str | None = None


@dataclass(frozen=True)
class TaskResult:
    task_id: str
    status: ProviderTaskStatus
    results: tuple[ResultEntry, ...] = ()
    code: str | None = None
    message: str | None = None
    billed_images: int | None = None
    request_id: str | None = None
    run_s: float | None = None
    """``end_time`` less ``submit_time``, as the provider reports them (when it does)."""

    @property
    def urls(self) -> list[str]:
        return [r.url for r in self.results if r.url]


def _json(body: bytes) -> dict[str, Any] | None:
    # Read leniently, unlike the requests the service takes in: refusing a billed submit's
    # answer for a repeated key would leave its task unknown. What is stored goes through
    # ``_str``, and deep nesting, which Python's reader cannot take, is no answer at all.
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError among them
        return None
    return value if isinstance(value, dict) else None


def _str(value: object) -> str | None:
    """A non-empty string that can be stored: an unpaired surrogate escape (``"\\ud800"``)
    is valid JSON that no UTF-8 encoder, so no database, takes."""
    if not isinstance(value, str) or not value:
        return None
    try:
        value.encode()
    except UnicodeEncodeError:
        return None
    return value


def retry_after_s(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds a ``Retry-After`` asks for: delta-seconds or an HTTP date (RFC 9110); None
    when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if _DELTA_SECONDS.fullmatch(value):
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000": a date that does not say its zone
        return None
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def _http_error(reply: Reply) -> ProviderHTTPError:
    body = _json(reply.body) or {}
    message = _str(body.get("message")) or _str(body.get("msg"))
    if message is None:
        message = reply.reason or "no message"
        if body == {} and reply.body:
            message = f"{message} (non-JSON body)"
    return ProviderHTTPError(
        reply.status,
        _str(body.get("code")),
        message,
        _str(body.get("request_id")),
        retry_after_s(reply.retry_after),
    )


@contextmanager
def _downloading() -> Iterator[None]:
    """httpx's failures as the provider's, for result downloads (which are never billed)."""
    try:
        yield
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
        raise ProviderConnectError(f"{exc.__class__.__name__}: {exc}") from None
    except httpx.TimeoutException as exc:
        raise ProviderTimeout(exc.__class__.__name__, ambiguous=False) from None
    except httpx.TransportError as exc:
        raise ProviderTransportError(f"{exc.__class__.__name__}: {exc}", ambiguous=False) from None


def _provider_seconds(output: dict[str, Any]) -> float | None:
    """How long the provider took, from its own timestamps (``2024-05-16 11:22:33.444``,
    same clock, so no zone needed). ``fromisoformat``: under 1 us a timestamp, where
    ``strptime`` took 17 us, twice per answer."""
    try:
        start = datetime.fromisoformat(str(output["submit_time"]))
        end = datetime.fromisoformat(str(output["end_time"]))
        seconds = (end - start).total_seconds()
    except (KeyError, ValueError, TypeError):  # TypeError: one with a zone, one without
        return None
    return seconds if seconds >= 0 else None


def parse_submit(body: dict[str, Any] | None) -> SubmitResult:
    """Read a submit's 200 answer: without a usable ``output.task_id`` the task it created
    cannot be polled, and may have been billed."""
    output = body.get("output") if body else None
    if not isinstance(output, dict):
        output = {}
    task_id = _str(output.get("task_id"))
    if task_id is None or len(task_id) > MAX_TASK_ID_LENGTH:
        raise ProviderTransportError(
            "submit answer without a usable output.task_id", ambiguous=True
        )
    status = _str(output.get("task_status")) or ""
    return SubmitResult(
        task_id=task_id,
        status=ProviderTaskStatus(status)
        if status in ProviderTaskStatus.__members__
        else ProviderTaskStatus.PENDING,
        request_id=_str(body.get("request_id")) if body else None,
    )


def parse_task(body: dict[str, Any]) -> TaskResult:
    """Read a query answer; every field but ``task_id`` and ``task_status`` is optional."""
    output = body.get("output")
    if not isinstance(output, dict) or not _str(output.get("task_id")):
        raise ProviderTransportError("answer without output.task_id", ambiguous=False)
    try:
        status = ProviderTaskStatus(str(output.get("task_status")))
    except ValueError:
        raise ProviderTransportError(
            f"unknown task_status {output.get('task_status')!r}", ambiguous=False
        ) from None
    entries = []
    results = output.get("results")
    for item in results if isinstance(results, list) else []:
        if not isinstance(item, dict):
            continue
        entries.append(
            ResultEntry(_str(item.get("url")), _str(item.get("code")), _str(item.get("message")))
        )
    usage = body.get("usage")
    billed = usage.get("image_count") if isinstance(usage, dict) else None
    return TaskResult(
        task_id=str(output["task_id"]),
        status=status,
        results=tuple(entries),
        code=_str(output.get("code")),
        message=_str(output.get("message")),
        billed_images=billed if isinstance(billed, int) else None,
        request_id=_str(body.get("request_id")),
        run_s=_provider_seconds(output),
    )


class DashScopeClient:
    """DashScope text-to-image over one pooled HTTP client. The key never leaves the headers."""

    def __init__(
        self,
        base_url: str,
        api_key: SecretStr,
        model: str,
        *,
        size: str = "1024*1024",
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 30.0,
        poll_timeout_s: float = 600.0,
        poll_schedule_scale: float = 1.0,
        query_rate_per_s: float = 20.0,
        max_connections: int = 100,
    ) -> None:
        self.model = model
        self.size = size
        self.poll_timeout_s = poll_timeout_s
        self.planner = PollPlanner(poll_schedule_scale)
        # DashScope allows 20 task queries/s per account; pace them in this process.
        self._queries = Pacer(query_rate_per_s)
        self._base_url = base_url.rstrip("/")
        self._submit_url = URL(self._base_url + SUBMIT_PATH)
        self._tasks_url = URL(self._base_url + "/tasks")
        self._headers = {"Authorization": f"Bearer {api_key.get_secret_value()}"}
        self._submit_headers = self._headers | {
            "X-DashScope-Async": "enable",
            "Content-Type": "application/json",
        }
        self._transport = ProviderTransport(
            self._base_url,
            connect_timeout_s=connect_timeout_s,
            read_timeout_s=read_timeout_s,
            max_connections=max_connections,
        )
        # Result URLs point at object storage: a client without the key, so it never leaks.
        self._downloads = httpx.AsyncClient(
            timeout=httpx.Timeout(read_timeout_s, connect=connect_timeout_s)
        )

    def __repr__(self) -> str:
        return f"DashScopeClient(base_url={self._base_url!r}, model={self.model!r})"

    async def aclose(self) -> None:
        await self._transport.aclose()
        await self._downloads.aclose()

    async def submit(
        self,
        prompt: str,
        *,
        n: int = 1,
        negative_prompt: str | None = None,
        seed: int | None = None,
    ) -> SubmitResult:
        """Create a provider task for ``n`` images. Billed: never call it twice for one image."""
        payload: dict[str, Any] = {
            "model": self.model,
            "input": {"prompt": prompt},
            # n defaults to 4 at DashScope and billing is per image, so it is always sent.
            "parameters": {"size": self.size, "n": n},
        }
        if negative_prompt:
            payload["input"]["negative_prompt"] = negative_prompt
        if seed is not None:
            payload["parameters"]["seed"] = seed
        reply = await self._transport.send(
            "POST",
            self._submit_url,
            self._submit_headers,
            json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode(),
            may_have_effect=True,
        )
        if reply.status != 200:
            raise _http_error(reply)
        return parse_submit(_json(reply.body))

    async def query(self, task_id: str) -> TaskResult:
        await self._queries.wait()
        reply = await self._transport.send(
            "GET", self._tasks_url / task_id, self._headers, may_have_effect=False
        )
        if reply.status != 200:
            raise _http_error(reply)
        body = _json(reply.body)
        if body is None:
            raise ProviderTransportError("query answer is not a JSON object", ambiguous=False)
        return parse_task(body)

    async def wait(
        self,
        task_id: str,
        *,
        submitted_at: float | None = None,
        on_poll: Callable[[TaskResult | None], Awaitable[None]] | None = None,
        timeout_s: float | None = None,
    ) -> TaskResult:
        """Poll until the task ends. Server errors and throttling while polling are waited
        out, as the official SDK does; ``on_poll`` may raise to stop early.

        ``submitted_at`` (``time.monotonic()`` at submit) lets the first poll go out when a
        task usually finishes, and teaches the planner how long tasks take."""
        started = time.monotonic()
        deadline = started + (timeout_s or self.poll_timeout_s)
        elapsed = None if submitted_at is None else started - submitted_at
        delays = self.planner.delays(elapsed)
        first = next(delays)
        if first > 0:
            await asyncio.sleep(first)
        for delay in delays:
            result: TaskResult | None = None
            try:
                result = await self.query(task_id)
            except ProviderHTTPError as exc:
                if exc.status != 429 and exc.status < 500:
                    raise
                if exc.retry_after_s is not None:
                    delay = max(delay, min(exc.retry_after_s, RETRY_AFTER_CAP_S))
            except ProviderTransportError:
                pass
            if result is not None and result.status.terminal:
                if submitted_at is not None and result.status is ProviderTaskStatus.SUCCEEDED:
                    seen = time.monotonic() - submitted_at
                    self.planner.observe(result.run_s if result.run_s is not None else seen)
                return result
            if on_poll is not None:
                await on_poll(result)
            if time.monotonic() + delay > deadline:
                raise ProviderPollTimeout(
                    f"provider task {task_id} still unfinished after "
                    f"{timeout_s or self.poll_timeout_s:.0f} s"
                )
            await asyncio.sleep(delay)
        raise AssertionError("unreachable: the poll schedule is endless")

    async def cancel(self, task_id: str) -> bool:
        """Cancel a provider task still PENDING; False when it can no longer be cancelled."""
        reply = await self._transport.send(
            "POST", self._tasks_url / task_id / "cancel", self._headers, may_have_effect=True
        )
        if reply.status == 200:
            return True
        error = _http_error(reply)
        if error.code == "UnsupportedOperation":
            return False
        raise error

    async def download(self, url: str) -> bytes:
        """Fetch a result image (result URLs are pre-signed and expire after 24 hours)."""
        with _downloading():
            response = await self._downloads.get(url)
        if response.status_code != 200:
            raise _http_error(Reply(response.status_code, response.reason_phrase, response.content))
        return response.content
