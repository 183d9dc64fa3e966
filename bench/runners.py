"""Run the project, the floor baseline or the original baseline on a fresh stage, and
measure: wall time from the first publish to the last final event, CPU of the service
processes, what the simulator counted, and what the database stored."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import asyncpg
import psutil
from sqlalchemy.engine import make_url

from bench.baselines import floor as floor_baseline
from bench.baselines import original as original_baseline
from bench.harness import (
    RssSampler,
    Stage,
    Watcher,
    cpu_by_name,
    cpu_seconds,
    log,
    publish,
    tasks,
)
from services.broker.topology import Topology


@dataclass
class Run:
    system: str
    processes: int
    tasks: int
    images_requested: int
    seconds: float = 0.0
    images_stored: int = 0
    tasks_failed: int = 0
    cpu_seconds: float = 0.0
    submits: int = 0
    throttled: int = 0
    billed: int = 0
    peak_running: int = 0
    latencies_s: list[float] = field(default_factory=list, repr=False)
    overheads_s: list[float] = field(default_factory=list, repr=False)
    """Each task's end-to-end time less its last image's time inside provider calls (as
    the worker measured and stored it), in publish order; the same as the latency for a
    system without a provider."""
    peak_rss_mb: dict[str, float] = field(default_factory=dict)
    cpu_by_process_s: dict[str, float] = field(default_factory=dict, repr=False)
    """CPU seconds of each process during the run, the database and broker servers too."""
    finished: bool = True

    @property
    def images_per_s(self) -> float:
        return self.images_stored / self.seconds if self.seconds else 0.0

    @property
    def cpu_per_image_ms(self) -> float:
        return 1000 * self.cpu_seconds / self.images_stored if self.images_stored else 0.0

    def cpu_breakdown_ms(self) -> dict[str, float]:
        """CPU milliseconds per stored image, by process (worker processes together)."""
        if not self.images_stored:
            return {}
        merged: dict[str, float] = {}
        for name, seconds in self.cpu_by_process_s.items():
            key = name.rstrip("0123456789") + (" processes" if name[-1:].isdigit() else "")
            merged[key] = merged.get(key, 0.0) + seconds
        return {k: round(1000 * v / self.images_stored, 2) for k, v in merged.items()}

    def measure_cpu(
        self, before: dict[str, float], after: dict[str, float], own: list[str]
    ) -> None:
        """CPU of each process between two ``cpu_by_name`` readings; ``own`` names the
        processes of the system under test, whose total is ``cpu_seconds``."""
        self.cpu_by_process_s = {k: after[k] - before.get(k, 0.0) for k in after}
        self.cpu_seconds = sum(self.cpu_by_process_s[name] for name in own)

    def summary(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("latencies_s")
        data.pop("cpu_by_process_s")
        data["images_per_s"] = round(self.images_per_s, 1)
        data["cpu_per_image_ms"] = round(self.cpu_per_image_ms, 2)
        data["seconds"] = round(self.seconds, 2)
        data["cpu_seconds"] = round(self.cpu_seconds, 2)
        return data


def _names(stage: Stage, processes: list[psutil.Popen]) -> list[str]:
    return [name for name, process in stage.processes.items() if process in processes]


async def _fetch(stage: Stage, sql: str) -> list[Any]:
    url = make_url(stage.database_url).set(drivername="postgresql")
    conn = await asyncpg.connect(url.render_as_string(hide_password=False))
    try:
        return list(await conn.fetch(sql))
    finally:
        await conn.close()


async def _count(stage: Stage, sql: str) -> int:
    return int((await _fetch(stage, sql))[0][0])


async def _wait(watcher: Watcher, expected: int, seconds: float) -> bool:
    return await watcher.until(lambda: len(watcher.finished) >= expected, seconds)


def _latencies(watcher: Watcher, less: dict[str, float] | None = None) -> list[float]:
    """Each finished task's time from its publish to its final event, in publish order;
    ``less``, by task, the share of it to take away."""
    less = less or {}
    return [
        watcher.finished[t][0] - p - less.get(t, 0.0)
        for t, p in watcher.published.items()
        if t in watcher.finished
    ]


_LAST_IMAGE_PROVIDER_S = (
    "SELECT DISTINCT ON (task_id) task_id, provider_seconds FROM task_images"
    " WHERE url IS NOT NULL ORDER BY task_id, stored_at DESC, provider_seconds"
)
"""By task, the provider time of the image stored last: the one whose store ended it."""


async def _provider_seconds(stage: Stage) -> dict[str, float]:
    rows = await _fetch(stage, _LAST_IMAGE_PROVIDER_S)
    return {r["task_id"]: r["provider_seconds"] or 0.0 for r in rows}


def _timing(run: Run, watcher: Watcher, provider_s: dict[str, float] | None = None) -> None:
    if watcher.published and watcher.finished:
        first = min(watcher.published.values())
        last = max(t for t, _ in watcher.finished.values())
        run.seconds = last - first
        run.latencies_s = _latencies(watcher)
        run.overheads_s = _latencies(watcher, provider_s) if provider_s else run.latencies_s
    run.tasks_failed = sum(
        1 for _, kind in watcher.finished.values() if kind != "task.status.images_ready"
    )


async def _sim_counts(stage: Stage, run: Run) -> None:
    stats = await stage.sim_stats()
    run.submits, run.throttled = stats["submits"], stats["throttled"]
    run.billed, run.peak_running = stats["billed_images"], stats["peak_running"]


async def project(
    count: int,
    *,
    workers: int = 1,
    sim: dict[str, object],
    settings: dict[str, object],
    rate_per_s: float | None = None,
    image_count: int = 4,
    seconds: float = 600,
) -> Run:
    stage = await Stage.open("project")
    run = Run("project", workers, count, count * image_count)
    try:
        await stage.start_simulator(**sim)
        service = await stage.start_service(workers, **settings)
        assert stage.connection is not None
        channel = await stage.connection.channel(publisher_confirms=True)
        watcher = await Watcher.attach(await stage.connection.channel(), stage.namespace)
        rss = RssSampler(stage.processes)
        rss.start()
        cpu_before = cpu_by_name(stage.processes)
        started = time.monotonic()
        await publish(
            channel,
            Topology(stage.namespace).tasks_exchange,
            "task.created",
            tasks(count, "bench prompt", image_count),
            watcher,
            rate_per_s,
        )
        run.finished = await _wait(watcher, count, seconds)
        if not run.finished:
            log(f"project: only {len(watcher.finished)}/{count} tasks finished")
        run.measure_cpu(cpu_before, cpu_by_name(stage.processes), _names(stage, service))
        run.peak_rss_mb = await rss.stop()
        _timing(run, watcher, await _provider_seconds(stage))
        if not run.seconds:
            run.seconds = time.monotonic() - started
        run.images_stored = await _count(
            stage, "SELECT count(*) FROM task_images WHERE url IS NOT NULL"
        )
        await _sim_counts(stage, run)
    finally:
        await stage.close()
    return run


async def floor(
    count: int,
    *,
    consumers: int = 1,
    image_count: int = 4,
    seconds: float = 600,
    rate_per_s: float | None = None,
) -> Run:
    """The floor on ``count`` tasks' image messages; with ``rate_per_s``, a task's messages
    go out together, so many tasks a second, and each task is timed to its last event."""
    stage = await Stage.open("floor")
    run = Run("floor", consumers, count, count * image_count)
    queue = floor_baseline.queue_name(stage.namespace)
    try:
        env = stage.env()
        procs = [
            stage.spawn(f"floor{i}", ["-m", "bench.baselines.floor"], env) for i in range(consumers)
        ]
        await stage.wait_consumers(queue, consumers)
        assert stage.connection is not None
        channel = await stage.connection.channel(publisher_confirms=True)
        watcher = await Watcher.attach(
            await stage.connection.channel(), stage.namespace, keys=[floor_baseline.EVENT]
        )
        messages = [
            {"task_id": t["task_id"], "index": i, "image_count": image_count}
            for t in tasks(count, "floor", image_count)
            for i in range(image_count)
        ]
        cpu_before = cpu_by_name(stage.processes)
        first = time.monotonic()
        await publish(channel, "", queue, messages, watcher, rate_per_s, group=image_count)
        expected = len(messages)
        run.finished = await watcher.until(
            lambda: watcher.counts.get(floor_baseline.EVENT, 0) >= expected, seconds
        )
        run.seconds = time.monotonic() - first
        run.latencies_s = run.overheads_s = _latencies(watcher)
        run.measure_cpu(cpu_before, cpu_by_name(stage.processes), _names(stage, procs))
        run.images_stored = await _count(stage, "SELECT count(*) FROM floor_images")
    finally:
        await stage.close([queue])
    return run


async def original(
    count: int,
    *,
    sim: dict[str, object],
    settings: dict[str, object],
    image_count: int = 4,
    seconds: float = 600,
) -> Run:
    stage = await Stage.open("original")
    run = Run("original", 1, count, count * image_count)
    queue = original_baseline.queue_name(stage.namespace)
    try:
        await stage.start_simulator(**sim)
        process = stage.spawn("original", ["-m", "bench.baselines.original"], stage.env(**settings))
        await stage.wait_consumers(queue, 1)
        assert stage.connection is not None
        channel = await stage.connection.channel(publisher_confirms=True)
        watcher = await Watcher.attach(await stage.connection.channel(), stage.namespace)
        cpu_before = cpu_seconds([process])
        await publish(channel, "", queue, tasks(count, "bench prompt", image_count), watcher)
        run.finished = await _wait(watcher, count, seconds)
        run.cpu_seconds = cpu_seconds([process]) - cpu_before
        _timing(run, watcher)
        run.images_stored = await _count(stage, "SELECT count(*) FROM orig_images")
        await _sim_counts(stage, run)
    finally:
        await stage.close([queue])
    return run
