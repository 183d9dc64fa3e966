"""The DashScope client's connections, over real HTTP: the key goes to the provider alone,
the environment's proxy is used as httpx would use it, and a failed connection says
whether the submit may have been billed."""

from __future__ import annotations

import asyncio
import base64
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from pydantic import SecretStr

from services.provider.dashscope import DashScopeClient, ProviderTaskStatus
from services.provider.errors import (
    ProviderConnectError,
    ProviderHTTPError,
    ProviderTimeout,
    ProviderTransportError,
)
from services.provider.simulator import RunningSimulator
from services.provider.simulator.server import free_port
from tests.integration.conftest import KEY, dashscope
from tests.proxy import Proxy


@asynccontextmanager
async def _recording_server(response: bytes) -> AsyncIterator[tuple[int, list[bytes]]]:
    """A local HTTP server that records each request's head and answers ``response``."""
    heads: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(response)
        await writer.drain()
        writer.close()

    port = free_port()
    server = await asyncio.start_server(answer, "127.0.0.1", port)
    try:
        yield port, heads
    finally:
        server.close()


async def test_the_key_goes_to_the_api_but_never_to_a_result_url() -> None:
    body = b'{"output": {"task_id": "t-1", "task_status": "PENDING"}}'
    response = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
    response += b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
    async with _recording_server(response) as (port, seen):
        c = DashScopeClient(f"http://127.0.0.1:{port}/api/v1", SecretStr(KEY), "wanx2.1-t2i-turbo")
        try:
            await c.submit("a cat")
            await c.download(f"http://127.0.0.1:{port}/result.png?Expires=1")
        finally:
            await c.aclose()
    submit, download = (head.decode().lower() for head in seen)
    assert submit.startswith("post /api/v1/services/aigc/text2image/image-synthesis ")
    assert f"authorization: bearer {KEY}".lower() in submit
    assert download.startswith("get /result.png?expires=1 ")
    assert "authorization" not in download and KEY.lower() not in download


@pytest.fixture
async def env_proxy(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[list[bytes]]:
    """A proxy named by HTTP_PROXY that records each request's head and answers 503."""
    response = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"
    async with _recording_server(response) as (port, heads):
        for name in ("http_proxy", "HTTP_PROXY"):
            monkeypatch.setenv(name, f"http://127.0.0.1:{port}")
        for name in ("no_proxy", "NO_PROXY"):
            monkeypatch.delenv(name, raising=False)
        yield heads


async def test_the_provider_is_reached_through_the_proxy_the_environment_names(
    env_proxy: list[bytes],
) -> None:
    c = DashScopeClient("http://dashscope.invalid/api/v1", SecretStr(KEY), "wanx2.1-t2i-turbo")
    try:
        with pytest.raises(ProviderHTTPError) as failed:
            await c.submit("a cat")
    finally:
        await c.aclose()
    assert failed.value.status == 503
    assert [head.split(b"\r\n")[0] for head in env_proxy] == [
        b"POST http://dashscope.invalid/api/v1/services/aigc/text2image/image-synthesis HTTP/1.1"
    ]


async def test_credentials_in_the_proxy_url_go_to_the_proxy_never_to_the_provider(
    env_proxy: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    port = os.environ["HTTP_PROXY"].rsplit(":", 1)[1]
    monkeypatch.setenv("HTTP_PROXY", f"http://relay:s3cret@127.0.0.1:{port}")
    monkeypatch.setenv("http_proxy", f"http://relay:s3cret@127.0.0.1:{port}")
    c = DashScopeClient("http://dashscope.invalid/api/v1", SecretStr(KEY), "wanx2.1-t2i-turbo")
    try:
        with pytest.raises(ProviderHTTPError):
            await c.submit("a cat")
    finally:
        await c.aclose()
    [head] = env_proxy
    credentials = base64.b64encode(b"relay:s3cret").decode()
    seen = head.decode().lower()
    assert f"proxy-authorization: basic {credentials}".lower() in seen
    assert f"\r\nauthorization: bearer {KEY}".lower() in seen
    assert head.startswith(b"POST http://dashscope.invalid/api/v1/")


async def test_a_provider_host_named_in_no_proxy_is_reached_directly(
    env_proxy: list[bytes], sim: RunningSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    c = dashscope(sim)
    try:
        done = await c.wait((await c.submit("a cat")).task_id)
    finally:
        await c.aclose()
    assert done.status is ProviderTaskStatus.SUCCEEDED
    assert env_proxy == []


async def test_a_hanging_submit_ends_in_an_ambiguous_timeout_within_the_configured_time(
    sim: RunningSimulator,
) -> None:
    sim.sim.configure({"hang_s": 30})
    slow = dashscope(sim, read_timeout_s=0.3)
    started = time.monotonic()
    try:
        with pytest.raises(ProviderTimeout) as raised:
            await slow.submit("x [sim:hang]")
    finally:
        await slow.aclose()
    assert time.monotonic() - started < 2
    assert raised.value.ambiguous, "the submit may have been billed"


async def test_a_connection_lost_after_the_submit_went_out_is_ambiguous(
    sim: RunningSimulator,
) -> None:
    sim.sim.configure({"hang_s": 30})
    host, port = httpx.URL(sim.base_url).host, httpx.URL(sim.base_url).port
    assert port is not None
    proxy = Proxy(host, port)
    await proxy.start()
    through = sim.base_url.replace(f":{port}/", f":{proxy.port}/")
    cut = DashScopeClient(through, SecretStr(KEY), "wanx2.1-t2i-turbo", read_timeout_s=5.0)
    try:
        submit = asyncio.create_task(cut.submit("x [sim:hang]"))
        for _ in range(500):  # until the request has reached the provider
            if sim.sim.stats.submits:
                break
            await asyncio.sleep(0.01)
        assert sim.sim.stats.submits == 1
        await proxy.stop()
        with pytest.raises(ProviderTransportError) as raised:
            await submit
    finally:
        await cut.aclose()
    assert raised.value.ambiguous, "the provider got the submit and may have billed it"


async def test_an_unreachable_provider_is_a_connect_error_that_provably_sent_nothing() -> None:
    client = DashScopeClient(
        f"http://127.0.0.1:{free_port()}/api/v1", SecretStr(KEY), "wanx2.1-t2i-turbo"
    )
    try:
        with pytest.raises(ProviderConnectError) as raised:
            await client.submit("x")
    finally:
        await client.aclose()
    assert not raised.value.ambiguous
