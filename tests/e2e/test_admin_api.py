"""The admin HTTP probe over real HTTP, on real services: every route's success and error
shapes as CONTRACT.md §4 gives them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from services.admin.app import create_app
from services.config import Settings, load_settings
from services.provider.simulator import RunningSimulator
from services.provider.simulator.server import EmbeddedServer, free_port
from services.runtime import Wiring
from tests.proxy import Proxy

TOKEN = "admin-token-for-tests"


async def _serve(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    import uvicorn

    port = free_port()
    server = EmbeddedServer(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        assert not task.done(), "the admin app did not start"
        await asyncio.sleep(0.02)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        yield client
    server.should_exit = True
    await task


def _with(settings: Settings, **overrides: Any) -> Settings:
    return load_settings(**(settings.model_dump() | overrides))


@pytest.fixture(scope="module")
async def api(service: Wiring) -> AsyncIterator[httpx.AsyncClient]:
    async for client in _serve(service.settings):
        yield client


@pytest.fixture(scope="module")
async def guarded(service: Wiring) -> AsyncIterator[httpx.AsyncClient]:
    async for client in _serve(_with(service.settings, admin_token=TOKEN)):
        yield client


async def test_healthz_and_readyz_answer_ok_while_everything_runs(api: httpx.AsyncClient) -> None:
    assert (await api.get("/healthz")).json() == {"status": "ok"}
    ready = await api.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"postgresql": "ok", "rabbitmq": "ok"}


async def test_a_task_created_over_http_is_processed_and_shown_like_the_original(
    api: httpx.AsyncClient,
) -> None:
    created = await api.post("/api/tasks", json={"prompt": "a cat over http", "userId": "u-7"})
    assert created.status_code == 201
    body = created.json()
    assert body["success"] is True
    assert set(body["queue"]) == {"running", "maxConcurrent"}
    task = body["data"]
    assert task["status"] == "PENDING" and task["userId"] == "u-7" and task["images"] == []
    for key in (
        "id",
        "prompt",
        "createdAt",
        "imageGenerationStartedAt",
        "imageGenerationCompletedAt",
        "failedAt",
        "errorMessage",
    ):
        assert key in task

    for _ in range(200):
        shown = (await api.get(f"/api/tasks/{task['id']}")).json()
        if shown["data"]["status"] == "IMAGES_READY":
            break
        await asyncio.sleep(0.05)
    assert shown["success"] is True and shown["data"]["status"] == "IMAGES_READY"
    assert [i["index"] for i in shown["data"]["images"]] == [0, 1, 2, 3]
    assert shown["data"]["imageGenerationCompletedAt"].endswith("Z")

    refused = await api.post(f"/api/tasks/{task['id']}/cancel")
    assert refused.status_code == 409
    assert refused.json() == {
        "success": False,
        "error": "Task cannot be cancelled (already completed)",
    }


async def test_a_polling_front_end_sees_an_image_retrying_and_why_until_the_task_ends(
    api: httpx.AsyncClient,
) -> None:
    # Every submit throttled: four attempts, about a second of scaled tier waits, FAILED.
    created = await api.post("/api/tasks", json={"prompt": "busy [sim:429]", "imageCount": 1})
    path = f"/api/tasks/{created.json()['data']['id']}"
    assert created.json()["data"]["retrying"] == []
    seen: dict[int, str] = {}
    for _ in range(300):
        task = (await api.get(path)).json()["data"]
        seen |= {r["attempt"]: r["error"] for r in task["retrying"] if r["index"] == 0}
        if task["status"] == "FAILED":
            break
        await asyncio.sleep(0.01)
    assert task["status"] == "FAILED" and task["retrying"] == []
    assert seen and set(seen) <= {1, 2, 3}
    assert all(e.startswith("provider error: 429 Throttling.RateQuota") for e in seen.values())


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"prompt": "   "}, "prompt: must not be blank"),
        ({"userId": "u"}, "prompt: Field required"),
        ({"prompt": "x" * 2001}, "prompt: must be at most 2000 characters (it has 2001)"),
        ({"prompt": 42}, "prompt: Input should be a valid string"),
        ({"prompt": "ok", "unknown": 1}, "unknown: Extra inputs are not permitted"),
        ({"prompt": "ok", "metadata": {"blob": "y" * 5000}}, "metadata: must be at most 4096"),
        ({"prompt": "bell\u0007"}, "prompt: must not contain control characters"),
        ({"prompt": "ok", "imageCount": 5}, "imageCount: Input should be less than or equal to 4"),
        ({"prompt": "ok", "imageCount": True}, "imageCount: Input should be a valid integer"),
        ({"prompt": "ok", "imageCount": "4"}, "imageCount: Input should be a valid integer"),
        ({"prompt": "ok", "userId": "  "}, "userId: must not be blank"),
        (b"prompt=cat", "request body is not valid JSON"),
        (b'{"prompt": "\\ud800"}', "request body has an unpaired UTF-16 surrogate escape"),
        (b'{"prompt": "a", "prompt": "b"}', "request body has the key 'prompt' twice"),
        (b'{"prompt": "a", "metadata": {"n": NaN}}', "NaN is not a JSON value"),
        (b'{"prompt": "a", "metadata": ' + b"[" * 5000 + b"]" * 5000 + b"}", "nested too deeply"),
        (b'["a cat"]', "request body must be a JSON object"),
    ],
)
async def test_bad_task_bodies_answer_400_in_the_original_shape_saying_what_is_wrong(
    api: httpx.AsyncClient, body: dict[str, Any] | bytes, error: str
) -> None:
    if isinstance(body, bytes):
        answer = await api.post("/api/tasks", content=body)
    else:
        answer = await api.post("/api/tasks", json=body)
    assert answer.status_code == 400
    assert answer.json()["success"] is False and error in answer.json()["error"]


async def test_an_oversized_body_answers_413(api: httpx.AsyncClient) -> None:
    answer = await api.post("/api/tasks", content=b"x" * (1024 * 1024))
    assert answer.status_code == 413 and answer.json()["success"] is False


async def test_an_oversized_body_sent_in_chunks_without_a_length_answers_413(
    api: httpx.AsyncClient,
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"prompt": "a cat", "metadata": {"blob": "'
        for _ in range(64):
            yield b"y" * 16384
        yield b'"}}'

    answer = await api.post("/api/tasks", content=chunks())
    assert answer.request.headers.get("transfer-encoding") == "chunked"
    assert answer.status_code == 413 and "larger than 65536 bytes" in answer.json()["error"]


async def test_unknown_tasks_answer_404(api: httpx.AsyncClient) -> None:
    assert (await api.get("/api/tasks/nope")).status_code == 404
    cancel = await api.post("/api/tasks/nope/cancel")
    assert cancel.status_code == 404 and cancel.json()["success"] is False


@pytest.mark.parametrize("task_id", ["bad%00id", "x" * 65, "a%20b", "%C3%A9t%C3%A9"])
async def test_ids_no_task_can_have_answer_404_even_where_the_database_could_not_read_them(
    api: httpx.AsyncClient, task_id: str
) -> None:
    for answer in (
        await api.get(f"/api/tasks/{task_id}"),
        await api.post(f"/api/tasks/{task_id}/cancel"),
    ):
        assert answer.status_code == 404 and answer.json()["error"] == "Task not found"


async def test_task_routes_answer_503_while_the_database_is_unreachable(service: Wiring) -> None:
    # Nothing listens on port 9 (discard) here: every connection attempt is refused.
    unreachable = "postgresql+asyncpg://postgres@127.0.0.1:9/imagegen"
    async for client in _serve(_with(service.settings, database_url=unreachable)):
        answer = await client.get("/api/tasks/t-anything")
        assert answer.status_code == 503
        assert answer.json()["error"].startswith("database unavailable")


async def test_a_database_that_refuses_a_statement_is_a_500_whose_details_stay_in_the_log(
    service: Wiring,
) -> None:
    from sqlalchemy.engine import make_url

    from services.db.engine import drop_database, ensure_database

    # A database without the service's tables: every statement is refused.
    url = make_url(service.settings.database_url).set(database="imagegen_bare_for_admin")
    bare = url.render_as_string(hide_password=False)
    await ensure_database(bare)
    try:
        async for client in _serve(_with(service.settings, database_url=bare)):
            with capture_logs() as logs:
                answer = await client.get("/api/tasks/t-anything")
            assert answer.status_code == 500
            assert answer.json() == {
                "success": False,
                "error": "database error: see the service's log",
            }
            logged = [e for e in logs if e.get("action") == "admin_db_error"]
            assert logged and 'relation "tasks" does not exist' in logged[0]["error"]
    finally:
        await drop_database(bare)


async def test_a_pending_task_can_be_cancelled_over_http(
    api: httpx.AsyncClient, service: Wiring, sim: RunningSimulator
) -> None:
    from services.db.rows import NewTask
    from services.intake.commands import create_task

    # Created through the same command as an event; the cancel then races the worker,
    # and PENDING and GENERATING_IMAGES are both cancellable. The provider takes a
    # second an image, so the worker cannot finish the task first.
    sim.sim.configure({"latency_s": 1.0})
    created = await create_task(
        service.repo, service.events, NewTask(id="http-cancel-1", user_id="u", prompt="p")
    )
    assert created.task.status.value == "PENDING"
    cancelled = {"status": "CANCELLED"}
    before = REGISTRY.get_sample_value("imagegen_tasks_finished_total", cancelled) or 0
    timed = REGISTRY.get_sample_value("imagegen_task_seconds_count", cancelled) or 0
    answer = await api.post("/api/tasks/http-cancel-1/cancel")
    assert answer.status_code == 200
    assert answer.json() == {"success": True, "message": "Task cancelled"}
    shown = (await api.get("/api/tasks/http-cancel-1")).json()["data"]
    assert shown["status"] == "CANCELLED"
    assert REGISTRY.get_sample_value("imagegen_tasks_finished_total", cancelled) == before + 1
    assert REGISTRY.get_sample_value("imagegen_task_seconds_count", cancelled) == timed + 1


async def test_queue_status_reports_slots_and_queues(api: httpx.AsyncClient) -> None:
    answer = await api.get("/api/queue/status")
    assert answer.status_code == 200
    data = answer.json()["data"]
    assert set(data) == {"running", "maxConcurrent", "queued", "retrying", "dead"}
    assert data["maxConcurrent"] == 3
    assert all(isinstance(v, int) and v >= 0 for v in data.values())


async def test_queue_status_counts_what_is_in_the_dead_queue_now(
    api: httpx.AsyncClient, service: Wiring
) -> None:
    import aio_pika

    before = (await api.get("/api/queue/status")).json()["data"]["dead"]
    channel = await service.connection.channel()
    await channel.default_exchange.publish(
        aio_pika.Message(b"parked by a test"), routing_key=service.topology.dead_queue
    )
    for _ in range(50):
        after = (await api.get("/api/queue/status")).json()["data"]["dead"]
        if after == before + 1:
            break
        await asyncio.sleep(0.05)
    assert after == before + 1
    queue = await channel.get_queue(service.topology.dead_queue)
    while (message := await queue.get(fail=False)) is not None:  # others return on close
        if message.body == b"parked by a test":
            await message.ack()
            break
    await channel.close()


async def test_metrics_are_prometheus_text(api: httpx.AsyncClient) -> None:
    answer = await api.get("/metrics")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    for name in (
        'imagegen_tasks{status="PENDING"}',
        'imagegen_tasks{status="GENERATING_IMAGES"}',
        "imagegen_images_stored_total",
        "imagegen_outbox_rows",
        "imagegen_queue_messages{",
        "imagegen_provider_calls_total",
    ):
        assert name in answer.text
    # Finished tasks are the table's whole history: counting them would scan it per scrape.
    assert 'imagegen_tasks{status="IMAGES_READY"}' not in answer.text


async def test_the_token_guards_api_routes_but_not_the_probes(guarded: httpx.AsyncClient) -> None:
    assert (await guarded.get("/api/queue/status")).status_code == 401
    for sent in (
        b"Bearer wrong",
        "Bearer caf\u00e9".encode(),
        b"Bearer \xff",
        f"Basic {TOKEN}".encode(),
        f"Bearer  {TOKEN}".encode(),
        TOKEN.encode(),
    ):
        wrong = await guarded.get("/api/queue/status", headers={"Authorization": sent})
        assert wrong.status_code == 401 and wrong.json()["success"] is False, sent
    for scheme in ("Bearer", "bearer", "BEARER"):
        headers = {"Authorization": f"{scheme} {TOKEN}"}
        assert (await guarded.get("/api/queue/status", headers=headers)).status_code == 200
    assert (await guarded.post("/api/tasks", json={"prompt": "x"})).status_code == 401
    for open_path in ("/healthz", "/readyz", "/metrics"):
        assert (await guarded.get(open_path)).status_code == 200
    assert TOKEN not in (await guarded.get("/metrics")).text


async def test_readyz_says_503_while_rabbitmq_is_unreachable_and_200_once_it_is_back(
    service: Wiring,
) -> None:
    amqp = urlparse(service.settings.amqp_url)
    proxy = Proxy(amqp.hostname or "127.0.0.1", amqp.port or 5672)
    url = service.settings.amqp_url.replace(f":{amqp.port or 5672}", f":{proxy.port}")
    async for client in _serve(_with(service.settings, amqp_url=url)):
        down = await client.get("/readyz")
        assert down.status_code == 503
        assert down.json()["checks"]["postgresql"] == "ok"
        assert down.json()["checks"]["rabbitmq"].startswith("unavailable")
        assert (await client.get("/api/queue/status")).status_code == 503

        await proxy.start()
        for _ in range(100):
            if (await client.get("/readyz")).status_code == 200:
                break
            await asyncio.sleep(0.1)
        assert (await client.get("/readyz")).status_code == 200
        await proxy.stop()


async def test_a_namespace_whose_queues_do_not_exist_is_named_as_such_not_as_an_outage(
    service: Wiring,
) -> None:
    async for client in _serve(_with(service.settings, namespace="never-started")):
        status = await client.get("/api/queue/status")
        assert status.status_code == 503
        assert status.json()["error"].startswith("queue never-started.images does not exist")
        ready = await client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["postgresql"] == "ok"
        assert "never-started.images does not exist" in ready.json()["checks"]["rabbitmq"]


async def test_the_probe_keeps_one_channel_however_often_a_queue_is_missing(
    service: Wiring,
) -> None:
    import aio_pika

    from services.admin.broker import BrokerProbe
    from services.broker.errors import TopologyMissing

    connection = await aio_pika.connect_robust(service.settings.amqp_url)
    async with connection:
        probe = BrokerProbe(service.settings.amqp_url, connection)
        for _ in range(3):  # each time, the broker closes the channel that asked
            with pytest.raises(TopologyMissing, match=r"never-started\.images does not exist"):
                await probe.depths(["never-started.images"])
        depths = await probe.depths([service.topology.images_queue])
        assert list(depths) == [service.topology.images_queue]
        assert connection.transport is not None
        assert len(connection.transport.connection.channels) == 1
        await probe.close()
        assert len(connection.transport.connection.channels) == 0
