"""The README's run command works on a fresh database and namespace, and compose.yaml only
uses commands and settings the project has."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import signal
import sys
import uuid
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import yaml
from prometheus_client.metrics import MetricWrapperBase
from sqlalchemy.engine import make_url

from services import metrics
from services.admin import app as admin_app
from services.broker.topology import Topology
from services.cli import app as cli_app
from services.config import Settings, _variable_name
from services.db.engine import drop_database
from services.provider.simulator.server import free_port

ROOT = Path(__file__).resolve().parents[2]


def _readme_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    first_screen = readme.split("---", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", first_screen)


def test_the_readme_first_screen_gives_the_run_and_test_commands() -> None:
    run, test = _readme_commands()[:2]
    assert run.rsplit("&& ", 1)[-1] == ".venv/bin/imagegen run --demo"
    assert test.rsplit("&& ", 1)[-1] == ".venv/bin/python -m pytest"
    ci = (ROOT / ".ci" / "run").read_text()
    assert ".venv/bin/python -m pytest\n" in ci, "CI runs the README's test command"


async def test_the_readme_run_command_serves_a_task_to_images_ready(settings: Settings) -> None:
    run = _readme_commands()[0].rsplit("&& ", 1)[-1]
    args = shlex.split(run)[1:]  # what follows .venv/bin/imagegen, run by this interpreter
    run_id = uuid.uuid4().hex[:8]
    url = make_url(settings.database_url)
    database_url = url.set(database=f"imagegen_readme_{run_id}").render_as_string(
        hide_password=False
    )
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IMAGEGEN_", "DASHSCOPE_"))}
    env |= {
        "IMAGEGEN_DATABASE_URL": database_url,
        "IMAGEGEN_AMQP_URL": settings.amqp_url,
        "IMAGEGEN_NAMESPACE": f"readme-{run_id}",
        "IMAGEGEN_HTTP_PORT": str(port),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output: list[str] = []

    async def read_until(text: str, seconds: float) -> None:
        assert process.stdout is not None
        async with asyncio.timeout(seconds):
            while not any(text in line for line in output):
                line = await process.stdout.readline()
                assert line, "the service exited:\n" + "".join(output)
                output.append(line.decode(errors="replace"))

    try:
        await read_until("final status: IMAGES_READY", 60)
        assert any("built-in provider simulator" in line for line in output)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            created = await http.post("/api/tasks", json={"prompt": "readme check"})
            task_id = created.json()["data"]["id"]
            data: dict[str, Any] = {}
            for _ in range(300):
                data = (await http.get(f"/api/tasks/{task_id}")).json()["data"]
                if data["status"] == "IMAGES_READY":
                    break
                await asyncio.sleep(0.1)
        assert data["status"] == "IMAGES_READY" and len(data["images"]) == 4
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        rest, _ = await asyncio.wait_for(process.communicate(), 30)
        output.append(rest.decode(errors="replace"))
        await drop_database(database_url)
        async with await aio_pika.connect_robust(settings.amqp_url) as connection:
            await Topology(f"readme-{run_id}").delete(await connection.channel())
    assert process.returncode == 0, "".join(output)[-3000:]


def test_every_compose_service_runs_an_existing_command_with_known_settings() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    commands = {c.name or c.callback.__name__ for c in cli_app.registered_commands}  # type: ignore[union-attr]
    known = {f"IMAGEGEN_{name.upper()}" for name in Settings.model_fields} | {
        "DASHSCOPE_API_KEY",
        "DASHSCOPE_BASE_URL",
        "DASHSCOPE_MODEL",
    }
    ours = {
        name: svc
        for name, svc in compose["services"].items()
        if "command" in svc and "build" in svc
    }
    assert {"migrate", "simulator", "intake", "relay", "worker", "admin"} <= set(ours)
    for name, service in ours.items():
        assert service["command"][0] in commands, f"{name}: unknown command {service['command']}"
        assert set(service["environment"]) <= known, f"{name}: unknown settings"
        assert (ROOT / service["build"]["dockerfile"]).is_file()
    for infra in ("postgres", "rabbitmq"):
        assert "healthcheck" in compose["services"][infra]
    assert "ports" not in compose["services"]["worker"], "workers scale without port clashes"


def test_the_readme_documents_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [name for name in map(_variable_name, Settings.model_fields) if name not in readme]
    assert not missing, f"settings missing from the README: {missing}"


def test_the_readme_names_every_metric_the_service_exports() -> None:
    readme = (ROOT / "README.md").read_text()
    exported = {
        metric.name
        for module in (metrics, admin_app)
        for value in vars(module).values()
        if isinstance(value, MetricWrapperBase)
        for metric in value.describe()
    }
    missing = sorted(name for name in exported if f"`{name}" not in readme)
    assert exported and not missing, f"metrics missing from the README: {missing}"
