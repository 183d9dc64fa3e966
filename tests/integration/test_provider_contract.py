"""The DashScope client against the simulator over real HTTP: every documented error row,
every task status, the exact request shape, throttling and its Retry-After."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from services.provider.dashscope import DashScopeClient, ProviderTaskStatus
from services.provider.errors import ProviderHTTPError, ProviderTransportError
from services.provider.simulator import RunningSimulator
from tests.integration.conftest import KEY, dashscope
from tests.unit.test_retry_policy import PROVIDER_TABLE


@pytest.fixture
async def client(sim: RunningSimulator) -> AsyncIterator[DashScopeClient]:
    c = dashscope(sim)
    yield c
    await c.aclose()


async def test_a_submitted_task_succeeds_with_a_real_png_and_is_billed_once(
    sim: RunningSimulator, client: DashScopeClient
) -> None:
    submitted = await client.submit("a cute cat")
    assert submitted.status is ProviderTaskStatus.PENDING and submitted.request_id
    result = await client.wait(submitted.task_id)
    assert result.status is ProviderTaskStatus.SUCCEEDED
    assert len(result.urls) == 1 and "Expires=" in result.urls[0]
    assert result.billed_images == 1
    image = await client.download(result.urls[0])
    assert image.startswith(b"\x89PNG\r\n\x1a\n")
    stats = sim.sim.stats.as_dict()
    assert (stats["submits"], stats["billed_images"]) == (1, 1)


async def test_two_images_of_one_prompt_have_different_bytes(client: DashScopeClient) -> None:
    images = []
    for _ in range(2):
        done = await client.wait((await client.submit("same prompt")).task_id)
        images.append(await client.download(done.urls[0]))
    assert images[0] != images[1]


async def test_requests_carry_exactly_the_headers_and_fields_dashscope_requires(
    sim: RunningSimulator, client: DashScopeClient
) -> None:
    await client.submit("a red fox", negative_prompt="blurry", seed=7)
    [seen] = sim.sim.requests
    assert seen["auth_ok"] is True
    assert seen["headers"]["x-dashscope-async"] == "enable"
    assert seen["headers"]["content-type"] == "application/json"
    import json

    body = json.loads(seen["body"])
    assert body == {
        "model": "wanx2.1-t2i-turbo",
        "input": {"prompt": "a red fox", "negative_prompt": "blurry"},
        "parameters": {"size": "1024*1024", "n": 1, "seed": 7},
    }


async def test_the_simulator_refuses_a_submit_without_the_async_header(
    sim: RunningSimulator,
) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{sim.base_url}/services/aigc/text2image/image-synthesis",
            headers={"Authorization": f"Bearer {KEY}"},
            json={"model": "wanx2.1-t2i-turbo", "input": {"prompt": "x"}},
        )
    assert response.status_code == 403 and response.json()["code"] == "AccessDenied"


async def test_the_simulator_refuses_a_misspelt_or_out_of_range_knob_and_keeps_its_config(
    sim: RunningSimulator,
) -> None:
    knobs = sim.base_url.removesuffix("/api/v1") + "/_sim/config"
    async with httpx.AsyncClient() as http:
        for change in ({"p429": 1.0}, {"p_429": 2}, [1]):
            refused = await http.put(knobs, json=change)
            assert refused.status_code == 400, change
        for body in (b'{"p_429": NaN}', b"[" * 5000 + b"]" * 5000, b"{"):
            refused = await http.put(knobs, content=body)
            assert refused.status_code == 400 and "the body" in refused.json()["error"], body
        assert (await http.get(knobs)).json()["p_429"] == 0.0
        taken = await http.put(knobs, json={"p_429": 0.25})
    assert taken.status_code == 200 and sim.sim.config.p_429 == 0.25


@pytest.mark.parametrize(("status", "code", "kind"), [r for r in PROVIDER_TABLE if r[1]])
async def test_every_documented_error_reaches_the_caller_typed(
    client: DashScopeClient, status: int, code: str, kind: object
) -> None:
    with pytest.raises(ProviderHTTPError) as raised:
        await client.submit(f"x [sim:error:{status}:{code}]")
    error = raised.value
    assert (error.status, error.code) == (status, code)
    assert error.request_id and error.message
    assert error.failure.http_status == status and error.failure.code == code


async def test_a_task_id_too_long_to_store_is_an_ambiguous_transport_error(
    client: DashScopeClient,
) -> None:
    with pytest.raises(ProviderTransportError) as raised:
        await client.submit("x [sim:longid]")
    assert raised.value.ambiguous, "the task was created: it may be billed"
    assert "task_id" in str(raised.value)


async def test_a_gateway_504_with_an_html_body_is_a_typed_error(client: DashScopeClient) -> None:
    with pytest.raises(ProviderHTTPError) as raised:
        await client.submit("x [sim:504]")
    assert raised.value.status == 504 and raised.value.code is None
    assert "non-JSON" in raised.value.message


@pytest.mark.parametrize(
    ("marker", "status", "code"),
    [
        ("inspect", 400, "DataInspectionFailed"),
        ("arrearage", 400, "Arrearage"),
        ("badkey", 401, "InvalidApiKey"),
        ("billoverdue", 429, "PostpaidBillOverdue"),
        ("429", 429, "Throttling.RateQuota"),
        ("500", 500, "InternalError"),
        ("503", 503, "ModelUnavailable"),
    ],
)
async def test_prompt_markers_force_the_named_fault(
    client: DashScopeClient, marker: str, status: int, code: str
) -> None:
    with pytest.raises(ProviderHTTPError) as raised:
        await client.submit(f"a cat [sim:{marker}]")
    assert (raised.value.status, raised.value.code) == (status, code)


async def test_markers_can_target_chosen_submits_of_a_prompt(client: DashScopeClient) -> None:
    prompt = "fox [sim:429@2]"
    await client.submit(prompt)
    with pytest.raises(ProviderHTTPError):
        await client.submit(prompt)
    await client.submit(prompt)


async def test_a_wrong_key_is_refused_and_never_shown(sim: RunningSimulator) -> None:
    bad = dashscope(sim, key="sk-wrong-key-123")
    try:
        with pytest.raises(ProviderHTTPError) as raised:
            await bad.submit("x")
    finally:
        await bad.aclose()
    assert raised.value.status == 401 and raised.value.code == "InvalidApiKey"
    assert "sk-wrong-key-123" not in str(raised.value) + repr(bad)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {"model": "no-such-model", "input": {"prompt": "x"}, "parameters": {"n": 1}},
            "Model not exist.",
        ),
        (
            {"model": "wanx2.1-t2i-turbo", "input": {"prompt": "x"}, "parameters": {"n": 5}},
            "Range of n should be [1, 4]",
        ),
        ({"model": "wanx2.1-t2i-turbo", "input": {"prompt": " "}}, "Field required: input.prompt"),
    ],
)
async def test_invalid_parameters_answer_400_invalid_parameter(
    sim: RunningSimulator, body: dict[str, Any], message: str
) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{sim.base_url}/services/aigc/text2image/image-synthesis",
            headers={"Authorization": f"Bearer {KEY}", "X-DashScope-Async": "enable"},
            json=body,
        )
    assert response.status_code == 400
    assert response.json()["code"] == "InvalidParameter"
    assert response.json()["message"] == message


async def test_n_defaults_to_four_when_omitted_so_the_client_always_sends_it(
    sim: RunningSimulator,
) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{sim.base_url}/services/aigc/text2image/image-synthesis",
            headers={"Authorization": f"Bearer {KEY}", "X-DashScope-Async": "enable"},
            json={"model": "wanx2.1-t2i-turbo", "input": {"prompt": "four"}},
        )
        assert response.status_code == 200
    sim.sim.advance()
    assert sim.sim.stats.billed_images == 4


async def test_a_task_over_the_running_limit_waits_pending_then_runs(
    sim: RunningSimulator, client: DashScopeClient
) -> None:
    sim.sim.configure({"running_limit": 1, "latency_s": 0.3})
    first = await client.submit("one")
    second = await client.submit("two")
    assert (await client.query(first.task_id)).status is ProviderTaskStatus.RUNNING
    assert (await client.query(second.task_id)).status is ProviderTaskStatus.PENDING
    assert (await client.wait(second.task_id)).status is ProviderTaskStatus.SUCCEEDED
    assert sim.sim.stats.peak_running == 1


async def test_a_pending_task_can_be_cancelled_but_a_running_one_cannot(
    sim: RunningSimulator, client: DashScopeClient
) -> None:
    sim.sim.configure({"running_limit": 1, "latency_s": 0.5})
    running = await client.submit("one")
    waiting = await client.submit("two")
    assert await client.cancel(waiting.task_id) is True
    assert (await client.query(waiting.task_id)).status is ProviderTaskStatus.CANCELED
    assert await client.cancel(running.task_id) is False
    await client.wait(running.task_id)
    assert sim.sim.stats.billed_images == 1


@pytest.mark.parametrize(
    ("marker", "code"),
    [
        ("fail", "InternalError.Algo"),
        ("failinspect", "DataInspectionFailed"),
    ],
)
async def test_a_failed_provider_task_reports_its_code_and_bills_nothing(
    sim: RunningSimulator, client: DashScopeClient, marker: str, code: str
) -> None:
    result = await client.wait((await client.submit(f"x [sim:{marker}]")).task_id)
    assert result.status is ProviderTaskStatus.FAILED
    assert result.code == code and result.message
    assert result.billed_images is None and sim.sim.stats.billed_images == 0


async def test_a_partial_success_lists_the_failed_entry_without_a_url(
    sim: RunningSimulator, client: DashScopeClient
) -> None:
    result = await client.wait((await client.submit("x [sim:partial]", n=2)).task_id)
    assert result.status is ProviderTaskStatus.SUCCEEDED
    assert len(result.urls) == 1
    failed = [r for r in result.results if r.url is None]
    assert failed and failed[0].code == "DataInspectionFailed"
    assert result.billed_images == 1 == sim.sim.stats.billed_images


async def test_unknown_tasks_answer_200_unknown(client: DashScopeClient) -> None:
    assert (await client.query("no-such-task")).status is ProviderTaskStatus.UNKNOWN
    marked = await client.submit("x [sim:unknown]")
    assert (await client.wait(marked.task_id)).status is ProviderTaskStatus.UNKNOWN


async def test_a_task_past_the_retention_answers_unknown_and_is_forgotten(
    sim: RunningSimulator, client: DashScopeClient
) -> None:
    sim.sim.configure({"task_ttl_s": 0.5})
    old = await client.submit("old")
    assert (await client.wait(old.task_id)).status is ProviderTaskStatus.SUCCEEDED
    await asyncio.sleep(0.6)
    fresh = await client.submit("fresh")
    assert (await client.query(old.task_id)).status is ProviderTaskStatus.UNKNOWN
    assert (await client.query(fresh.task_id)).status is ProviderTaskStatus.SUCCEEDED
    assert list(sim.sim.tasks) == [fresh.task_id]
    assert sim.sim.stats.billed_images == 2


async def test_the_rate_limit_answers_429_throttling_rate_quota(
    sim: RunningSimulator, client: DashScopeClient
) -> None:
    sim.sim.configure({"rate_per_s": 2, "burst": 2})
    await client.submit("a")
    await client.submit("b")
    with pytest.raises(ProviderHTTPError) as raised:
        await client.submit("c")
    assert (raised.value.status, raised.value.code) == (429, "Throttling.RateQuota")
    assert sim.sim.stats.throttled == 1


async def test_polling_waits_out_server_errors(
    sim: RunningSimulator, client: DashScopeClient
) -> None:
    sim.sim.configure({"latency_s": 0.2})
    submitted = await client.submit("x")
    sim.sim.configure({"p_503": 1.0})  # only submits fail; queries keep answering
    assert (await client.wait(submitted.task_id)).status is ProviderTaskStatus.SUCCEEDED


async def test_a_retry_after_reaches_the_caller_with_the_error(
    sim: RunningSimulator, client: DashScopeClient
) -> None:
    sim.sim.configure({"p_429": 1.0, "retry_after_s": 45})
    with pytest.raises(ProviderHTTPError) as raised:
        await client.submit("x")
    assert (raised.value.status, raised.value.retry_after_s) == (429, 45.0)


async def test_polling_throttled_with_a_retry_after_waits_that_long_before_asking_again(
    sim: RunningSimulator, client: DashScopeClient
) -> None:
    submitted = await client.submit("x")
    sim.sim.configure({"p_query_429": 1.0, "retry_after_s": 1})
    started = time.monotonic()
    waiting = asyncio.create_task(client.wait(submitted.task_id))
    await asyncio.sleep(0.3)  # ~30 polls at this client's 10 ms rhythm, were it ignored
    sim.sim.configure({"p_query_429": 0.0})
    assert (await waiting).status is ProviderTaskStatus.SUCCEEDED
    assert sim.sim.stats.queries_throttled == 1
    assert time.monotonic() - started >= 1.0
