"""What every benchmark needs: an isolated stage (own database and namespace), the service
roles and the simulator as separate processes, a status-event watcher, CPU and RSS readings.

Everything runs on this machine against the local PostgreSQL and RabbitMQ.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import psutil
from aio_pika.abc import AbstractChannel, AbstractRobustConnection, DeliveryMode
from sqlalchemy.engine import make_url

from services.broker.errors import TopologyMissing
from services.broker.topology import Topology, queue_counts
from services.db.engine import drop_database, ensure_database
from services.db.migrate import upgrade
from services.provider.simulator.server import free_port

ROOT = Path(__file__).resolve().parents[1]
SIM_KEY = "bench-key"
DATABASE_URL = os.environ.get(
    "IMAGEGEN_BENCH_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)
AMQP_URL = os.environ.get("IMAGEGEN_BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
FINAL_EVENTS = ("task.status.images_ready", "task.status.failed", "task.status.cancelled")


def log(message: str) -> None:
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


@dataclass
class Stage:
    """One isolated run: a database and a namespace of its own, and its processes."""

    name: str
    namespace: str
    database_url: str
    amqp_url: str = AMQP_URL
    processes: dict[str, psutil.Popen] = field(default_factory=dict)
    sim_url: str | None = None
    connection: AbstractRobustConnection | None = None

    @classmethod
    async def open(cls, name: str) -> Stage:
        run_id = uuid.uuid4().hex[:6]
        url = make_url(DATABASE_URL).set(database=f"imagegen_bench_{name}_{run_id}")
        stage = cls(name, f"bench-{name}-{run_id}", url.render_as_string(hide_password=False))
        await ensure_database(stage.database_url)
        await upgrade(stage.database_url)
        stage.connection = await aio_pika.connect_robust(stage.amqp_url)
        # Only what the baselines need; the service declares its own topology at start.
        channel = await stage.connection.channel()
        await channel.declare_exchange(
            Topology(stage.namespace).status_exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        return stage

    async def close(self, extra_queues: Iterable[str] = ()) -> None:
        for name in list(self.processes):
            self.stop(name)
        if self.connection is not None:
            channel = await self.connection.channel()
            for queue in extra_queues:
                await channel.queue_delete(queue)
            await Topology(self.namespace).delete(channel)
            await self.connection.close()
        await drop_database(self.database_url)

    def env(self, **settings: object) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("IMAGEGEN_", "DASHSCOPE_"))}
        env |= {
            "IMAGEGEN_DATABASE_URL": self.database_url,
            "IMAGEGEN_AMQP_URL": self.amqp_url,
            "IMAGEGEN_NAMESPACE": self.namespace,
            "IMAGEGEN_LOG_LEVEL": "WARNING",
            "IMAGEGEN_LOG_FORMAT": "json",
        }
        if self.sim_url:
            env |= {"DASHSCOPE_API_KEY": SIM_KEY, "DASHSCOPE_BASE_URL": f"{self.sim_url}/api/v1"}
        env |= {f"IMAGEGEN_{k.upper()}": str(v) for k, v in settings.items()}
        return env

    def spawn(self, name: str, args: list[str], env: dict[str, str]) -> psutil.Popen:
        logs = ROOT / "bench" / "results" / "tmp"
        logs.mkdir(parents=True, exist_ok=True)
        profiled = os.environ.get("IMAGEGEN_BENCH_PROFILE", "")
        if profiled and name.startswith(tuple(profiled.split(","))):
            # cProfile counts a coroutine only while it runs, so its totals are CPU, not
            # waiting; the report is written when the process exits (gracefully on SIGTERM).
            report = logs / f"profile-{self.name}-{name}.prof"
            args = ["-m", "cProfile", "-o", str(report), *args]
        with (logs / f"{self.namespace}-{name}.log").open("wb") as stderr:
            process = psutil.Popen(
                [sys.executable, *args], env=env, cwd=ROOT, stdout=stderr, stderr=stderr
            )
        self.processes[name] = process
        return process

    def stop(self, name: str) -> None:
        process = self.processes.pop(name)
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(30)
            except psutil.TimeoutExpired:
                process.kill()

    async def start_simulator(self, **knobs: object) -> str:
        port = free_port()
        args = ["-m", "services", "simulator", "--port", str(port), "--api-key", SIM_KEY]
        for knob, value in knobs.items():
            args += [f"--{knob.replace('_', '-')}", str(value)]
        self.spawn("simulator", args, self.env())
        self.sim_url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient() as http:
            for _ in range(300):
                try:
                    await http.get(f"{self.sim_url}/_sim/stats")
                    return self.sim_url
                except httpx.TransportError:
                    await asyncio.sleep(0.05)
        raise RuntimeError("the simulator did not start")

    async def sim_stats(self) -> dict[str, Any]:
        async with httpx.AsyncClient() as http:
            stats: dict[str, Any] = (await http.get(f"{self.sim_url}/_sim/stats")).json()
            return stats

    async def start_service(self, workers: int, **settings: object) -> list[psutil.Popen]:
        """intake + relay + ``workers`` worker processes; returns them once all consume."""
        env = self.env(**settings)
        started = [
            self.spawn("intake", ["-m", "services", "intake"], env),
            self.spawn("relay", ["-m", "services", "relay"], env),
        ]
        started += [
            self.spawn(f"worker{i}", ["-m", "services", "worker"], env) for i in range(workers)
        ]
        topology = Topology(self.namespace)
        await self.wait_consumers(topology.intake_queue, 1)
        await self.wait_consumers(topology.images_queue, workers)
        return started

    async def wait_consumers(self, queue: str, count: int, seconds: float = 60) -> None:
        assert self.connection is not None
        channel = await self.connection.channel()
        try:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                try:
                    if (await queue_counts(channel, queue)).consumers >= count:
                        return
                except TopologyMissing:  # not declared yet by the process starting up
                    channel = await self.connection.channel()
                for name, process in self.processes.items():
                    if process.poll() is not None:
                        raise RuntimeError(f"{name} exited with {process.returncode}")
                await asyncio.sleep(0.1)
            raise RuntimeError(f"{queue} never had {count} consumers")
        finally:
            await channel.close()


class Watcher:
    """A subscriber of the status exchange that timestamps what it sees.

    It binds only the events a run waits for: bound to every status event, it took about
    three deliveries and acks per image from the machine under test, where the floor's
    watcher takes one."""

    def __init__(self) -> None:
        self.published: dict[str, float] = {}
        self.finished: dict[str, tuple[float, str]] = {}
        self.counts: dict[str, int] = {}
        self.changed = asyncio.Event()

    @classmethod
    async def attach(
        cls, channel: AbstractChannel, namespace: str, keys: Iterable[str] = FINAL_EVENTS
    ) -> Watcher:
        watcher = cls()
        await channel.set_qos(prefetch_count=5000)
        status = await channel.declare_exchange(
            Topology(namespace).status_exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        for key in keys:
            await queue.bind(status, routing_key=key)

        async def seen(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            now = time.monotonic()
            event = json.loads(message.body)
            kind = str(event.get("event_type"))
            watcher.counts[kind] = watcher.counts.get(kind, 0) + 1
            if kind in FINAL_EVENTS or event.get("final") is True:
                watcher.finished.setdefault(str(event["task_id"]), (now, kind))
            watcher.changed.set()
            await message.ack()

        await queue.consume(seen)
        return watcher

    async def until(self, predicate: Any, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), min(remaining, 1.0))
            except TimeoutError:
                pass
        return True


async def publish(
    channel: AbstractChannel,
    exchange: str,
    routing_key: str,
    bodies: list[dict[str, Any]],
    watcher: Watcher | None = None,
    rate_per_s: float | None = None,
    group: int = 1,
) -> None:
    """Publish persistent JSON messages with confirms, in batches, optionally paced at
    ``rate_per_s`` groups of ``group`` messages (a task's image messages, for the floor)."""
    target = channel.default_exchange if exchange == "" else await channel.get_exchange(exchange)
    started = time.monotonic()
    batch = 200 if rate_per_s is None else group
    for offset in range(0, len(bodies), batch):
        chunk = bodies[offset : offset + batch]
        if rate_per_s is not None:
            await asyncio.sleep(max(0.0, started + offset / group / rate_per_s - time.monotonic()))
        now = time.monotonic()
        if watcher is not None:
            for body in chunk:
                watcher.published.setdefault(str(body.get("task_id")), now)
        await asyncio.gather(
            *(
                target.publish(
                    aio_pika.Message(
                        json.dumps(body).encode(),
                        content_type="application/json",
                        delivery_mode=DeliveryMode.PERSISTENT,
                    ),
                    routing_key=routing_key,
                )
                for body in chunk
            )
        )


def tasks(count: int, prompt: str, image_count: int = 4) -> list[dict[str, Any]]:
    return [
        {
            "task_id": f"b-{uuid.uuid4().hex[:12]}",
            "user_id": "bench",
            "prompt": prompt,
            "image_count": image_count,
        }
        for _ in range(count)
    ]


def cpu_seconds(processes: Iterable[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def cpu_by_name(processes: dict[str, psutil.Popen]) -> dict[str, float]:
    """CPU seconds so far of each named process, and of every PostgreSQL and RabbitMQ
    server process on the machine (nothing else uses them during a run)."""
    totals = {name: cpu_seconds([process]) for name, process in processes.items()}
    totals |= {"postgresql": 0.0, "rabbitmq": 0.0}
    for process in psutil.process_iter(["name"]):
        name = process.info["name"] or ""
        server = "postgresql" if name.startswith("postgres") else None
        server = "rabbitmq" if "beam" in name else server
        if server is not None:
            totals[server] += cpu_seconds([process])
    return totals


class RssSampler:
    """Peak resident memory of each named process, sampled every ``interval_s``."""

    def __init__(self, processes: dict[str, psutil.Popen], interval_s: float = 0.2) -> None:
        self.processes = dict(processes)
        self.interval_s = interval_s
        self.peak_mb: dict[str, float] = dict.fromkeys(self.processes, 0.0)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> dict[str, float]:
        if self._task is not None:
            self._task.cancel()
        return {name: round(mb, 1) for name, mb in self.peak_mb.items()}

    async def _run(self) -> None:
        while True:
            for name, process in self.processes.items():
                try:
                    mb = process.memory_info().rss / 2**20
                except psutil.Error:
                    continue
                self.peak_mb[name] = max(self.peak_mb[name], mb)
            await asyncio.sleep(self.interval_s)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]
