"""The loops a process runs beside its consumers (relay, reconciler, admin probe) last as
long as the service: one that ends first stops it, so the process exits and is restarted
instead of looking alive with a part of it gone."""

from __future__ import annotations

import asyncio

from structlog.testing import capture_logs

from services.runtime import LoopFailed, _supervised


async def _fails() -> None:
    await asyncio.sleep(0)
    raise KeyError("outbox row without a body")


async def _returns() -> None:
    await asyncio.sleep(0)


async def _runs_until(stop: asyncio.Event) -> None:
    await stop.wait()


async def test_a_loop_that_raises_stops_the_service_and_says_which_and_why() -> None:
    stop, failures = asyncio.Event(), list[LoopFailed]()
    with capture_logs() as logs:
        loop = _supervised("relay", _fails(), stop, failures)
        await asyncio.wait_for(stop.wait(), 1)
    assert loop.done() and stop.is_set()
    assert [str(f) for f in failures] == ["the relay loop stopped: 'outbox row without a body'"]
    [line] = [e for e in logs if e.get("action") == "loop_failed"]
    assert line["loop"] == "relay" and line["log_level"] == "error"
    assert isinstance(line["exc_info"], KeyError), "an unexpected error keeps its traceback"


async def test_a_loop_that_returns_while_the_service_runs_is_a_failure_too() -> None:
    stop, failures = asyncio.Event(), list[LoopFailed]()
    _supervised("reconciler", _returns(), stop, failures)
    await asyncio.wait_for(stop.wait(), 1)
    assert [str(f) for f in failures] == ["the reconciler loop stopped: it returned"]


async def test_an_error_without_a_message_is_named_by_its_type() -> None:
    async def times_out() -> None:
        raise TimeoutError()

    stop, failures = asyncio.Event(), list[LoopFailed]()
    _supervised("relay", times_out(), stop, failures)
    await asyncio.wait_for(stop.wait(), 1)
    assert [str(f) for f in failures] == ["the relay loop stopped: TimeoutError"]


async def test_loops_that_end_because_the_service_stops_are_no_failure() -> None:
    stop, failures = asyncio.Event(), list[LoopFailed]()
    loops = [_supervised(name, _runs_until(stop), stop, failures) for name in ("relay", "admin")]
    await asyncio.sleep(0.01)
    assert not stop.is_set() and not any(loop.done() for loop in loops)
    stop.set()
    await asyncio.gather(*loops)
    assert failures == []
