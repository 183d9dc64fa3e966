"""Fault injection against the real service: separate processes (intake, relays, workers,
admin) on their own database and namespace, the simulator in this process, a durable
subscriber recording every status event. ``invariants.check`` reads what a run broke.

Shared by the CI-sized suite (tests/chaos) and the long run (bench/chaos.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import httpx
from aio_pika.abc import AbstractRobustConnection, DeliveryMode
from sqlalchemy.engine import make_url

from services.broker.topology import Topology, queue_counts
from services.config import Settings, load_settings
from services.db.engine import drop_database, ensure_database
from services.db.migrate import upgrade
from services.provider.simulator import RunningSimulator
from services.provider.simulator.server import free_port
from tests.chaos.poison import poison

ROOT = Path(__file__).resolve().parents[2]
PROVIDER_KEY = "sk-chaos-provider-key-5f1e9a"
ADMIN_TOKEN = "chaos-admin-token-c83d20"
TERMINAL = ("IMAGES_READY", "FAILED", "CANCELLED")
FINAL_EVENT = {
    "IMAGES_READY": "task.status.images_ready",
    "FAILED": "task.status.failed",
    "CANCELLED": "task.status.cancelled",
}
PROVIDER_CHAOS = {
    "p_429": 0.08,
    "p_500": 0.04,
    "p_503": 0.03,
    "p_504": 0.03,
    "p_hang": 0.01,
    "p_task_failed": 0.03,
    "p_unknown": 0.02,
    "hang_s": 3.0,
}


@dataclass
class Counters:
    tasks: int = 0
    duplicates: int = 0
    cancels: int = 0
    poison: int = 0
    kills: int = 0
    restarts: int = 0
    broker_restarts: int = 0
    database_restarts: int = 0
    unrecorded: int = 0
    """Submits the service reported as possibly billed without a recorded answer."""


@dataclass
class Chaos:
    settings: Settings
    sim: RunningSimulator
    log_dir: Path
    admin_port: int
    connection: AbstractRobustConnection | None = None
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    prompts: dict[str, str] = field(default_factory=dict)
    poison_ids: set[str] = field(default_factory=set)
    events: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    produced: list[str] = field(default_factory=list)
    """Text the run produced outside the logs: HTTP bodies, metrics."""
    counters: Counters = field(default_factory=Counters)
    last_event_at: float = 0.0
    recorder: aio_pika.abc.AbstractChannel | None = None

    @classmethod
    async def open(cls, base: Settings, sim: RunningSimulator, name: str) -> Chaos:
        run_id = uuid.uuid4().hex[:6]
        url = make_url(base.database_url)
        values = base.model_dump() | {
            "database_url": url.set(database=f"imagegen_chaos_{run_id}").render_as_string(
                hide_password=False
            ),
            "namespace": f"chaos-{name}-{run_id}",
            "dashscope_api_key": PROVIDER_KEY,
            "dashscope_base_url": sim.base_url,
            "admin_token": ADMIN_TOKEN,
        }
        chaos = cls(load_settings(**values), sim, ROOT / ".chaos" / f"{name}-{run_id}", free_port())
        chaos.log_dir.mkdir(parents=True, exist_ok=True)
        sim.sim.configure({"api_key": PROVIDER_KEY})
        await ensure_database(chaos.settings.database_url)
        await upgrade(chaos.settings.database_url)
        chaos.connection = await aio_pika.connect_robust(
            chaos.settings.amqp_url, reconnect_interval=1
        )
        topology = Topology(chaos.settings.namespace, chaos.settings.retry_ttl_scale)
        channel = await chaos.connection.channel()
        await topology.declare(channel)
        # Durable, so no event is missed while the broker restarts.
        queue = await channel.declare_queue(f"{topology.namespace}.chaos.subscriber", durable=True)
        status = await channel.get_exchange(topology.status_exchange)
        await queue.bind(status, routing_key="#")
        await channel.set_qos(prefetch_count=500)

        async def record(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            event = json.loads(message.body)
            chaos.events[str(event.get("task_id"))].append(event)
            chaos.produced.append(message.body.decode())
            chaos.last_event_at = time.monotonic()
            await message.ack()

        await queue.consume(record)
        chaos.recorder = channel
        return chaos

    async def channel(self, **kw: Any) -> aio_pika.abc.AbstractChannel:
        """A channel, once the connection is back (it may be reconnecting after a restart)."""
        assert self.connection is not None
        deadline = time.monotonic() + 60
        while True:
            try:
                return await self.connection.channel(**kw)
            except (RuntimeError, aio_pika.exceptions.AMQPError, ConnectionError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)

    @property
    def topology(self) -> Topology:
        return Topology(self.settings.namespace, self.settings.retry_ttl_scale)

    def env(self) -> dict[str, str]:
        s = self.settings
        env = {k: v for k, v in os.environ.items() if not k.startswith(("IMAGEGEN_", "DASHSCOPE_"))}
        return env | {
            "IMAGEGEN_DATABASE_URL": s.database_url,
            "IMAGEGEN_AMQP_URL": s.amqp_url,
            "IMAGEGEN_NAMESPACE": s.namespace,
            "IMAGEGEN_MAX_CONCURRENT": "4",
            "IMAGEGEN_RETRY_TTL_SCALE": str(s.retry_ttl_scale),
            "IMAGEGEN_POLL_SCHEDULE_SCALE": str(s.poll_schedule_scale),
            "IMAGEGEN_PROVIDER_SUBMIT_RATE_PER_S": "0",
            "IMAGEGEN_PROVIDER_READ_TIMEOUT_S": "1",
            "IMAGEGEN_SHUTDOWN_GRACE_S": "5",
            "IMAGEGEN_OUTBOX_POLL_INTERVAL_S": "0.5",
            "IMAGEGEN_RECONCILE_INTERVAL_S": "2",
            "IMAGEGEN_RECONCILE_STALE_AFTER_S": "20",
            "IMAGEGEN_HTTP_PORT": str(self.admin_port),
            "IMAGEGEN_ADMIN_TOKEN": ADMIN_TOKEN,
            "IMAGEGEN_LOG_FORMAT": "json",
            "IMAGEGEN_LOG_LEVEL": "INFO",
            "DASHSCOPE_API_KEY": PROVIDER_KEY,
            "DASHSCOPE_BASE_URL": s.dashscope_base_url,
        }

    def start(self, name: str) -> subprocess.Popen[bytes]:
        role = name.rstrip("0123456789")
        with (self.log_dir / f"{name}.log").open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "services", role],
                env=self.env(),
                cwd=ROOT,
                stdout=log,
                stderr=log,
            )
        self.processes[name] = process
        return process

    async def start_all(self, workers: int = 3, relays: int = 2) -> None:
        for name in [
            "intake",
            *(f"relay{i}" for i in range(relays)),
            *(f"worker{i}" for i in range(workers)),
            "admin",
        ]:
            self.start(name)
        await self.wait_consumers(self.topology.images_queue, workers)
        await self.wait_consumers(self.topology.intake_queue, 1)
        await self.wait_http()

    async def wait_consumers(self, queue: str, count: int, seconds: float = 60) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            channel = await self.channel()
            try:
                if (await queue_counts(channel, queue)).consumers >= count:
                    return
            finally:
                await channel.close()
            await asyncio.sleep(0.1)
        raise AssertionError(f"{queue} never had {count} consumers")

    async def wait_http(self, seconds: float = 30) -> None:
        async with httpx.AsyncClient() as http:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                try:
                    await http.get(f"http://127.0.0.1:{self.admin_port}/healthz")
                    return
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
        raise AssertionError("the admin probe never answered")

    def kill(self, name: str) -> None:
        process = self.processes[name]
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        self.counters.kills += 1

    def restart(self, name: str) -> None:
        self.start(name)
        self.counters.restarts += 1

    async def kill_random_worker(self) -> str:
        name = random.choice([n for n in self.processes if n.startswith("worker")])
        self.kill(name)
        await asyncio.sleep(random.uniform(0.0, 0.5))
        self.restart(name)
        return name

    async def publish(
        self, routing_key: str, body: bytes | dict[str, Any], message_id: str | None = None
    ) -> str:
        channel = await self.channel(publisher_confirms=True)
        try:
            exchange = await channel.get_exchange(self.topology.tasks_exchange)
            message_id = message_id or str(uuid.uuid4())
            raw = body if isinstance(body, bytes) else json.dumps(body).encode()
            await exchange.publish(
                aio_pika.Message(
                    raw,
                    content_type="application/json",
                    message_id=message_id,
                    delivery_mode=DeliveryMode.PERSISTENT,
                ),
                routing_key=routing_key,
            )
        finally:
            await channel.close()
        return message_id

    async def create_tasks(self, count: int, cancel_every: int = 12) -> list[str]:
        """Each published twice (at-least-once producers); some cancelled soon after."""
        created = []
        for _ in range(count):
            task_id = f"c-{uuid.uuid4().hex[:12]}"
            marker = " [sim:partial]" if random.random() < 0.03 else ""
            prompt = f"chaos {task_id}{marker}"
            body = {
                "task_id": task_id,
                "user_id": "chaos",
                "prompt": prompt,
                "image_count": random.choice((1, 2, 4, 4)),
            }
            self.prompts[task_id] = prompt
            await self.publish("task.created", body)
            await self.publish("task.created", body)
            self.counters.tasks += 1
            self.counters.duplicates += 1
            if random.randrange(cancel_every) == 0:
                await asyncio.sleep(random.uniform(0, 0.3))
                await self.publish("task.cancel", {"task_id": task_id, "reason": "chaos"})
                self.counters.cancels += 1
            created.append(task_id)
        return created

    async def create_over_http(self, count: int) -> None:
        """Tasks through the admin API, while others arrive over AMQP: both doors at once."""
        for i in range(count):
            prompt = f"chaos over http {uuid.uuid4().hex[:8]} #{i}"
            answer = await self.http(
                "POST",
                "/api/tasks",
                json={"prompt": prompt, "userId": "chaos-http"},
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            )
            assert answer.status_code == 201, answer.text
            self.prompts[answer.json()["data"]["id"]] = prompt
            self.counters.tasks += 1

    async def inject_poison(self) -> None:
        for routing_key, body in poison(conflict_id=next(iter(self.prompts), None)):
            self.poison_ids.add(await self.publish(routing_key, body))
            self.counters.poison += 1

    async def http(self, method: str, path: str, **kw: Any) -> httpx.Response:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.admin_port}") as http:
            response = await http.request(method, path, **kw)
        self.produced.append(response.text)
        return response

    async def connect_db(self) -> asyncpg.Connection:
        url = make_url(self.settings.database_url).set(drivername="postgresql")
        return await asyncpg.connect(url.render_as_string(hide_password=False))

    async def wait_settled(self, seconds: float) -> bool:
        """Every task terminal, the outbox empty, and the events quiet for a second."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                conn = await self.connect_db()
                try:
                    open_tasks = await conn.fetchval(
                        "SELECT count(*) FROM tasks WHERE status <> ALL($1::text[])", list(TERMINAL)
                    )
                    known = await conn.fetchval(
                        "SELECT count(*) FROM tasks WHERE id = ANY($1)", list(self.prompts)
                    )
                    outbox = await conn.fetchval("SELECT count(*) FROM outbox")
                finally:
                    await conn.close()
            except (OSError, asyncpg.PostgresError):
                await asyncio.sleep(0.5)
                continue
            quiet = time.monotonic() - self.last_event_at > 1.0
            if open_tasks == 0 and known == len(self.prompts) and outbox == 0 and quiet:
                return True
            await asyncio.sleep(0.5)
        return False

    async def dead_letters(self) -> dict[str, str]:
        channel = await self.channel()
        queue = await channel.get_queue(self.topology.dead_queue)
        found: dict[str, str] = {}
        while (message := await queue.get(fail=False)) is not None:
            found[str(message.message_id)] = str((message.headers or {}).get("x-imagegen-reason"))
            self.produced.append(found[str(message.message_id)])
            await message.ack()
        await channel.close()
        return found

    async def stop_broker(self) -> None:
        """Returns once the broker has stopped: ``rabbitmqctl`` itself takes a second or
        more here, so a fixed sleep after starting it says nothing about the broker."""
        await _run("rabbitmqctl", "stop_app")

    async def start_broker(self) -> None:
        await _run("rabbitmqctl", "start_app")
        self.counters.broker_restarts += 1

    async def restart_broker(self, down_s: float = 2.0) -> None:
        await self.stop_broker()
        await asyncio.sleep(down_s)
        await self.start_broker()

    async def restart_database(self) -> None:
        version = sorted(os.listdir("/etc/postgresql"))[0]
        await _run(
            "pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart", "-m", "fast"
        )
        self.counters.database_restarts += 1

    async def close(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
        if self.connection is not None:
            if self.recorder is not None:
                # Closed first: a robust channel would declare its queue again after deletion.
                await self.recorder.close()
            channel = await self.channel()
            await channel.queue_delete(f"{self.topology.namespace}.chaos.subscriber")
            await self.topology.delete(channel)
            await self.connection.close()
        await drop_database(self.settings.database_url)


async def _run(*command: str) -> None:
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {stderr.decode()[-500:]}")
