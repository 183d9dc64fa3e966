"""The CLI run as an operator runs it, in its own process: ``imagegen status`` shows a
task as it was written, whatever its prompt holds, with every image's URL whole on a narrow
terminal; ``imagegen submit --wait`` and ``imagegen cancel`` tell by their exit codes how
the task ended or the cancel was answered; ``imagegen dead`` shows what was parked and why;
a JSON log stays JSON on every line, the libraries' lines included; a process that cannot
serve its admin probe shuts down and says why, as a command whose database or broker is
away does."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import uuid

import pytest

from services.db.repository import Repository
from services.provider.simulator import RunningSimulator
from services.runtime import Wiring
from tests.e2e.conftest import Bus

CLI = [sys.executable, "-c", "from services.cli import main; main()"]


def _env(service: Wiring) -> dict[str, str]:
    return os.environ | {
        "IMAGEGEN_DATABASE_URL": service.settings.database_url,
        "IMAGEGEN_AMQP_URL": service.settings.amqp_url,
        "IMAGEGEN_NAMESPACE": service.settings.namespace,
        "IMAGEGEN_RETRY_TTL_SCALE": str(service.settings.retry_ttl_scale),
        "COLUMNS": "60",
    }


def imagegen(service: Wiring, *args: str, **env_vars: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], env=_env(service) | env_vars, capture_output=True, text=True, timeout=60
    )


async def watch_events(service: Wiring, *args: str) -> asyncio.subprocess.Process:
    """``imagegen events`` once its queue is bound: its first line says so."""
    process = await asyncio.create_subprocess_exec(
        *CLI, "events", *args, env=_env(service), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert process.stdout is not None
    first = await asyncio.wait_for(process.stdout.readline(), 30)
    assert first.startswith(b"watching status events"), first
    return process


async def shown_events(process: asyncio.subprocess.Process) -> list[list[str]]:
    """The fields of each line the watch printed after its first, once it has ended."""
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, err.decode()
    return [line.split("  ") for line in out.decode().splitlines()]


async def test_status_shows_a_prompt_with_brackets_as_written_and_each_url_whole(
    service: Wiring, bus: Bus
) -> None:
    prompt = "[/red] fox [b]"
    task_id = await bus.create(prompt, image_count=2)
    final = await bus.final(task_id)
    shown = await asyncio.to_thread(imagegen, service, "status", task_id)
    assert shown.returncode == 0, shown.stderr
    assert prompt in shown.stdout and "IMAGES_READY" in shown.stdout
    lines = shown.stdout.splitlines()
    for image in final["images"]:
        assert f"image {image['index']}: {image['url']}" in lines


async def test_status_shows_an_image_retrying_after_a_throttled_attempt_and_why(
    service: Wiring, bus: Bus, sim: RunningSimulator
) -> None:
    sim.sim.configure({"latency_s": 3.0})  # the second attempt runs long: a state to look at
    task_id = await bus.create("throttled [sim:429@1]", image_count=1)
    await bus.wait_for(task_id, "task.image.retrying")
    shown = await asyncio.to_thread(imagegen, service, "status", task_id)
    assert shown.returncode == 0, shown.stderr
    assert (
        "image 0 retrying after attempt 1: provider error: 429 Throttling.RateQuota - "
        "Requests rate limit exceeded, please try again later."
    ) in shown.stdout.splitlines()
    assert (await bus.final(task_id))["status"] == "IMAGES_READY"  # nothing left for others


async def test_status_of_an_id_with_brackets_says_there_is_no_such_task(
    service: Wiring,
) -> None:
    shown = await asyncio.to_thread(imagegen, service, "status", "[/x]")
    assert shown.returncode == 1
    assert shown.stdout.strip() == "no task [/x]"


async def test_submit_wait_exits_0_once_the_images_are_ready(service: Wiring) -> None:
    shown = await asyncio.to_thread(
        imagegen, service, "submit", "a fox", "--image-count", "1", "--wait", "--timeout", "20"
    )
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "final status: IMAGES_READY" in shown.stdout


async def test_submit_wait_exits_1_with_the_reason_when_the_task_is_rejected(
    service: Wiring,
) -> None:
    shown = await asyncio.to_thread(imagegen, service, "submit", " ", "--wait", "--timeout", "20")
    assert shown.returncode == 1, shown.stdout + shown.stderr
    assert "final status: rejected" in shown.stdout and "prompt: must not be blank" in shown.stdout


@pytest.mark.parametrize("role", ["admin", "simulator"])
async def test_a_json_log_stays_json_when_a_library_reports_the_failure(
    service: Wiring, role: str
) -> None:
    # Both serve with uvicorn; the simulator's server is also embedded in `imagegen run`
    # beside the admin probe's, where its logging setup printed the probe's lines bare.
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        args = [role] if role == "admin" else [role, "--host", "0.0.0.0", "--port", port]
        shown = await asyncio.to_thread(
            imagegen, service, *args, IMAGEGEN_HTTP_PORT=port, IMAGEGEN_LOG_FORMAT="json"
        )
    assert shown.returncode != 0
    lines = [json.loads(line) for line in shown.stderr.splitlines()]
    failures = [line for line in lines if line.get("logger") == "uvicorn.error"]
    assert failures and "address already in use" in failures[0]["event"], shown.stderr
    assert all(line["action"] and line["level"] and line["timestamp"] for line in lines)


async def test_a_taken_admin_port_stops_the_process_after_a_clean_shutdown_and_says_why(
    service: Wiring,
) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        shown = await asyncio.to_thread(
            imagegen, service, "admin", IMAGEGEN_HTTP_PORT=port, IMAGEGEN_LOG_FORMAT="json"
        )
    assert shown.returncode == 1, shown.stderr
    said = " ".join(shown.stdout.split())
    assert f"error: the admin loop stopped: cannot listen on 0.0.0.0:{port}" in said
    lines = [json.loads(line) for line in shown.stderr.splitlines()]
    assert [line["loop"] for line in lines if line["action"] == "loop_failed"] == ["admin"]
    assert lines[-1]["event"] == "service stopped", "it shut down, not died"


async def test_cancel_stops_a_task_being_generated_and_exits_0(
    service: Wiring, bus: Bus, sim: RunningSimulator, service_repo: Repository
) -> None:
    sim.sim.configure({"latency_s": 1.0})
    task_id = await bus.create("cancelled by an operator", image_count=2)
    await bus.wait_for(task_id, "task.status.generating_images")
    args = ["cancel", task_id, "--reason", "wrong prompt"]
    shown = await asyncio.to_thread(imagegen, service, *args)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert f"task {task_id} cancelled" in shown.stdout
    assert (await bus.final(task_id))["status"] == "CANCELLED"
    found = await service_repo.get_task(task_id)
    assert found is not None and found[0].error_message == "cancelled: wrong prompt"
    await asyncio.sleep(1.5)  # the provider finishes the images it was running meanwhile


async def test_cancel_of_an_unknown_task_is_refused_and_exits_1(service: Wiring) -> None:
    shown = await asyncio.to_thread(imagegen, service, "cancel", "cli-no-such-task")
    assert shown.returncode == 1, shown.stdout + shown.stderr
    assert "cancel refused (not_found)" in shown.stdout


async def test_a_cancel_breaking_the_contract_is_refused_by_the_service_with_its_reason(
    service: Wiring,
) -> None:
    args = ["cancel", "cli-task", "--reason", "x" * 501]
    shown = await asyncio.to_thread(imagegen, service, *args, COLUMNS="300")
    assert shown.returncode == 1, shown.stdout + shown.stderr
    said = " ".join(shown.stdout.split())
    assert "cancel refused (invalid_request): invalid task.cancel: reason: String should" in said


@pytest.mark.parametrize(
    "args",
    [["cancel", "not a task id"], ["submit", "a fox", "--task-id", "not a task id"]],
)
async def test_a_task_id_the_service_could_not_answer_about_is_a_usage_error(
    service: Wiring, args: list[str]
) -> None:
    shown = await asyncio.to_thread(imagegen, service, *args, COLUMNS="300")
    assert shown.returncode == 2, shown.stdout + shown.stderr
    assert "'not a task id' does not match" in shown.stderr


async def test_submit_sends_the_producers_own_task_id_and_metadata(
    service: Wiring, bus: Bus
) -> None:
    task_id = f"order-{uuid.uuid4().hex[:8]}"
    args = ["submit", "a fox", "--image-count", "1", "--wait", "--timeout", "20"]
    args += ["--task-id", task_id, "--metadata", '{"order": 7}']
    shown = await asyncio.to_thread(imagegen, service, *args)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert f"submitted task {task_id}" in shown.stdout
    assert (await bus.final(task_id))["metadata"] == {"order": 7}


async def test_metadata_that_is_not_json_is_a_usage_error(service: Wiring) -> None:
    shown = await asyncio.to_thread(imagegen, service, "submit", "a fox", "--metadata", "{NaN}")
    assert shown.returncode == 2, shown.stdout + shown.stderr
    assert "--metadata" in shown.stderr and "JSON" in shown.stderr


async def test_cancel_of_a_finished_task_is_refused_as_not_cancellable(
    service: Wiring, bus: Bus
) -> None:
    task_id = await bus.create("already done", image_count=1)
    assert (await bus.final(task_id))["status"] == "IMAGES_READY"
    shown = await asyncio.to_thread(imagegen, service, "cancel", task_id, COLUMNS="200")
    assert shown.returncode == 1, shown.stdout + shown.stderr
    assert "cancel refused (not_cancellable)" in shown.stdout


async def test_dead_shows_a_parked_task_created_with_its_reason(service: Wiring, bus: Bus) -> None:
    task_id = await bus.create("", image_count=1)
    await bus.wait_for(task_id, "task.rejected")
    shown = await asyncio.to_thread(imagegen, service, "dead", "--limit", "1000", COLUMNS="300")
    assert shown.returncode == 0, shown.stderr
    row = next(line for line in shown.stdout.splitlines() if task_id in line)
    assert "task.created" in row and "prompt: must not be blank" in row


async def test_events_of_a_task_are_shown_one_line_each_until_its_last(
    service: Wiring, bus: Bus
) -> None:
    task_id = f"e2e-{uuid.uuid4().hex[:12]}"
    watch = await watch_events(service, "--task-id", task_id)
    await bus.create("a watched fox", image_count=2, task_id=task_id)

    lines = sorted(await shown_events(watch), key=lambda fields: int(fields[4][1:]))
    assert [(f[1], f[2], f[3], f[4], f[5]) for f in lines] == [
        ("task.status.pending", task_id, "PENDING", "v1", "0/2"),
        ("task.status.generating_images", task_id, "GENERATING_IMAGES", "v2", "0/2"),
        ("task.image.ready", task_id, "GENERATING_IMAGES", "v3", "1/2"),
        ("task.image.ready", task_id, "GENERATING_IMAGES", "v4", "2/2"),
        ("task.status.images_ready", task_id, "IMAGES_READY", "v5", "2/2"),
    ]


async def test_events_bound_to_a_pattern_show_only_the_keys_it_matches(
    service: Wiring, bus: Bus
) -> None:
    task_id = f"e2e-{uuid.uuid4().hex[:12]}"
    watch = await watch_events(service, "--task-id", task_id, "--key", "task.status.*")
    await bus.create("a watched owl", image_count=2, task_id=task_id)

    kinds = sorted(fields[1] for fields in await shown_events(watch))
    assert kinds == [
        "task.status.generating_images",
        "task.status.images_ready",
        "task.status.pending",
    ]


async def test_events_stop_after_the_count_asked_for(service: Wiring, bus: Bus) -> None:
    watch = await watch_events(service, "--count", "2")
    await bus.create("a counted cat", image_count=1)

    assert len(await shown_events(watch)) == 2


@pytest.mark.parametrize(
    ("args", "setting", "url", "reason"),
    [
        # Nothing listens on port 9 (discard) here: every connection attempt is refused.
        (
            ["status", "cli-task"],
            "IMAGEGEN_DATABASE_URL",
            "postgresql+asyncpg://postgres@127.0.0.1:9/imagegen",
            "error: database unavailable",
        ),
        (
            ["queue"],
            "IMAGEGEN_AMQP_URL",
            "amqp://guest:guest@127.0.0.1:9/",
            "error: RabbitMQ at 127.0.0.1:9 cannot be reached",
        ),
    ],
)
def test_a_command_whose_server_is_away_exits_1_with_the_reason_and_no_traceback(
    args: list[str], setting: str, url: str, reason: str
) -> None:
    env = os.environ | {setting: url, "COLUMNS": "300"}
    shown = subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 1, shown.stdout + shown.stderr
    assert reason in shown.stdout
    assert "Traceback" not in shown.stdout + shown.stderr
