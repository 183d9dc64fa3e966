"""The five benchmark scenarios. Each returns its figures and the baseline's, measured in
the same invocation, with their ratio; ``smoke`` shrinks each to about ten seconds."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

from bench import runners
from bench.baselines import original as original_baseline
from bench.harness import RssSampler, Stage, log, percentile, publish, tasks
from services.broker.topology import Topology, queue_counts

LIFTED = {
    "max_concurrent": 64,
    "provider_query_rate_per_s": 0,
    "provider_submit_rate_per_s": 0,
    "worker_prefetch": 64,
}


PAIRS = 3
"""Interleaved project/floor pairs per process count. The machine's speed drifts by tens of
percent within minutes, which moves the two systems of a pair together but not runs minutes
apart: the median pair is reported, every pair's ratio beside it."""


def _ratio(pair: tuple[runners.Run, runners.Run]) -> float:
    return pair[0].images_per_s / pair[1].images_per_s


async def throughput(smoke: bool) -> dict[str, Any]:
    """2,000 tasks x 4 images, zero provider latency, limits lifted: images/s for 1 and 2
    worker processes against the floor with as many consumer processes."""
    count = 40 if smoke else 2000
    rows = []
    breakdown: dict[str, dict[str, dict[str, float]]] = {}
    for processes in (1, 2):
        pairs = []
        for n in range(1 if smoke else PAIRS):
            log(f"throughput, pair {n + 1}: project, {processes} worker process(es), {count} tasks")
            ours = await runners.project(
                count, workers=processes, sim={"latency": 0}, settings=LIFTED
            )
            log(f"throughput, pair {n + 1}: floor, {processes} consumer process(es)")
            base = await runners.floor(count, consumers=processes)
            pairs.append((ours, base))
        ours, base = sorted(pairs, key=_ratio)[len(pairs) // 2]
        rows.append(
            {
                "processes": processes,
                "project_images_per_s": round(ours.images_per_s, 1),
                "floor_images_per_s": round(base.images_per_s, 1),
                "ratio_to_floor": round(ours.images_per_s / base.images_per_s, 3),
                "project_cpu_ms_per_image": round(ours.cpu_per_image_ms, 2),
                "floor_cpu_ms_per_image": round(base.cpu_per_image_ms, 2),
                "images_stored": ours.images_stored,
                "billed": ours.billed,
                "pairs_project_images_per_s": [round(o.images_per_s, 1) for o, _ in pairs],
                "pairs_ratio_to_floor": [round(_ratio(pair), 3) for pair in pairs],
            }
        )
        breakdown[str(processes)] = {
            "project": ours.cpu_breakdown_ms(),
            "floor": base.cpu_breakdown_ms(),
        }
    return {
        "rows": rows,
        "cpu_ms_per_image": breakdown,
        "targets": {"images_per_s_2p": 400, "ratio_to_floor_2p": 0.35},
    }


async def utilization(smoke: bool) -> dict[str, Any]:
    """Provider at 0.5 s per image and 3 running, MAX_CONCURRENT 3: images/s against the
    ideal 3 / 0.5 s = 6/s, for the project and the original pipeline."""
    count = 6 if smoke else 75
    sim = {"latency": 0.5, "running_limit": 3}
    settings = {"max_concurrent": 3, "provider_submit_rate_per_s": 0}  # no submit limit here
    ideal = 3 / 0.5
    log(f"utilization: project, {count * 4} images")
    ours = await runners.project(count, sim=sim, settings=settings)
    log(f"utilization: original, {count * 4} images")
    base = await runners.original(count, sim=sim, settings=settings)
    return {
        "ideal_images_per_s": ideal,
        "project_images_per_s": round(ours.images_per_s, 2),
        "original_images_per_s": round(base.images_per_s, 2),
        "project_utilization": round(ours.images_per_s / ideal, 3),
        "original_utilization": round(base.images_per_s / ideal, 3),
        "ratio": round(ours.images_per_s / base.images_per_s, 2),
        "targets": {"utilization": 0.95},
    }


async def storm(smoke: bool) -> dict[str, Any]:
    """100 tasks x 4 images at once against 4 submissions/s and 4 running tasks, retry
    tiers scaled by 0.1: makespan, submits and billing per stored image, 429s."""
    count = 8 if smoke else 100
    sim = {"rate": 4, "running_limit": 4, "latency": 0.25}
    # The project is configured as an operator would: paced a little under the account's
    # documented limit. The original has no such setting.
    systems = (
        ("project", runners.project, {"retry_ttl_scale": 0.1, "provider_submit_rate_per_s": 3.6}),
        ("original", runners.original, {"retry_ttl_scale": 0.1}),
    )
    out: dict[str, Any] = {}
    for name, runner, settings in systems:
        log(f"storm: {name}, {count} tasks")
        run = await runner(count, sim=sim, settings=settings)
        stored = max(run.images_stored, 1)
        out[name] = {
            "makespan_s": round(run.seconds, 1),
            "images_stored": run.images_stored,
            "tasks_failed": run.tasks_failed,
            "submits_per_stored_image": round(run.submits / stored, 2),
            "throttled_429": run.throttled,
            "billed_per_stored_image": round(run.billed / stored, 3),
            "finished": run.finished,
        }
    out["makespan_ratio"] = round(
        out["original"]["makespan_s"] / max(out["project"]["makespan_s"], 0.001), 2
    )
    out["targets"] = {"billed_per_stored_image": 1.0}
    return out


def _percentiles(runs: list[runners.Run], tasks_per_s: float) -> dict[str, Any]:
    """Percentiles of the pipeline's own time per task (end to end, less the time inside
    provider calls), and of the end-to-end time itself, over the tasks of every run."""
    # The first second's tasks of each run meet cold connections, caches and code paths:
    # shown apart, not left out.
    first = max(1, round(tasks_per_s))
    own = [1000 * v for run in runs for v in run.overheads_s]
    warm = [1000 * v for run in runs for v in run.overheads_s[first:]]
    e2e = [1000 * v for run in runs for v in run.latencies_s]
    return {
        "tasks": len(own),
        "p50_ms": round(percentile(own, 50), 1),
        "p95_ms": round(percentile(own, 95), 1),
        "p99_ms": round(percentile(own, 99), 1),
        "p99_after_first_s_ms": round(percentile(warm or own, 99), 1),
        "e2e_p50_ms": round(percentile(e2e, 50), 1),
        "e2e_p99_ms": round(percentile(e2e, 99), 1),
        "runs_p99_ms": [round(percentile([1000 * v for v in r.overheads_s], 99), 1) for r in runs],
    }


async def latency(smoke: bool, images_per_s: float | None = None) -> dict[str, Any]:
    """At half the throughput of scenario 1 (2 worker processes), with a zero-latency
    provider: per task, the end-to-end time less the time its last image spent inside
    provider calls, the pipeline's own overhead (the end-to-end figures beside it). The
    floor (2 consumer processes) takes the same tasks at the same rate: what this
    machine's hops cost a task with no pipeline at all.

    A p99 over one 30-second run is its slowest dozen tasks, often a single cluster of
    them, so the project and the floor run in interleaved pairs, as in scenario 1, and
    the percentiles are taken over the tasks of all their runs."""
    if images_per_s is None:
        log("latency: measuring throughput first")
        probe = await runners.project(
            40 if smoke else 600, workers=2, sim={"latency": 0}, settings=LIFTED
        )
        images_per_s = probe.images_per_s
    tasks_per_s = images_per_s / 2 / 4
    seconds = 5 if smoke else 30
    count = max(4, int(tasks_per_s * seconds))
    ours, base = [], []
    for n in range(1 if smoke else PAIRS):
        log(f"latency, pair {n + 1}: project, {count} tasks at {tasks_per_s:.1f} tasks/s")
        ours.append(
            await runners.project(
                count, workers=2, sim={"latency": 0}, settings=LIFTED, rate_per_s=tasks_per_s
            )
        )
        log(f"latency, pair {n + 1}: floor, {count} tasks at {tasks_per_s:.1f} tasks/s")
        base.append(await runners.floor(count, consumers=2, rate_per_s=tasks_per_s))
    project, floor = _percentiles(ours, tasks_per_s), _percentiles(base, tasks_per_s)
    return {
        "offered_tasks_per_s": round(tasks_per_s, 1),
        "project": project,
        "floor": floor,
        "p50_ratio_to_floor": round(project["p50_ms"] / floor["p50_ms"], 2),
        "p99_ratio_to_floor": round(project["p99_ms"] / floor["p99_ms"], 2),
        "targets": {"p99_ms": 50},
    }


async def _backlog_peak(count: int, drain_s: float) -> dict[str, float]:
    stage = await Stage.open("memory")
    try:
        await stage.start_simulator(latency=0.2)
        await stage.start_service(1, max_concurrent=2)
        rss = RssSampler(stage.processes)
        rss.start()
        assert stage.connection is not None
        channel = await stage.connection.channel(publisher_confirms=True)
        topology = Topology(stage.namespace)
        await publish(channel, topology.tasks_exchange, "task.created", tasks(count, "backlog"))
        url = make_url(stage.database_url).set(drivername="postgresql")
        conn = await asyncpg.connect(url.render_as_string(hide_password=False))
        deadline = time.monotonic() + 1800
        while time.monotonic() < deadline:  # wait until the whole backlog is queued
            intake = await queue_counts(channel, topology.intake_queue)
            rows = await conn.fetchval("SELECT count(*) FROM outbox")
            if intake.messages == 0 and rows < 50:
                break
            await asyncio.sleep(1)
        await conn.close()
        await asyncio.sleep(drain_s)  # one worker draining the backlog
        peaks = await rss.stop()
        return {k: v for k, v in peaks.items() if k != "simulator"}
    finally:
        await stage.close()


ORIGINAL = "original (baseline)"
TAKE_IN_S = 60
"""How long the original gets to take a backlog in. Each task it holds waits in the 500 ms
admission loop, so with tens of thousands held it spends its CPU waking them and takes the
rest in at a few a second (34,500 of 50,000 after four minutes, seen here)."""


async def _original_backlog_peak(count: int, drain_s: float) -> tuple[dict[str, float], int]:
    """The original with the same backlog: it takes every task in as it arrives and keeps
    it in memory until admitted. Its peak RSS, and how many tasks it took in."""
    stage = await Stage.open("memory-original")
    queue = original_baseline.queue_name(stage.namespace)
    try:
        await stage.start_simulator(latency=0.2)
        process = stage.spawn(
            "original", ["-m", "bench.baselines.original"], stage.env(max_concurrent=2)
        )
        await stage.wait_consumers(queue, 1)
        rss = RssSampler({ORIGINAL: process})
        rss.start()
        assert stage.connection is not None
        channel = await stage.connection.channel(publisher_confirms=True)
        await publish(channel, "", queue, tasks(count, "backlog"))
        url = make_url(stage.database_url).set(drivername="postgresql")
        conn = await asyncpg.connect(url.render_as_string(hide_password=False))
        deadline = time.monotonic() + TAKE_IN_S
        taken = 0
        while time.monotonic() < deadline and taken < count:
            await asyncio.sleep(1)
            taken = await conn.fetchval("SELECT count(*) FROM orig_tasks")
        await conn.close()
        await asyncio.sleep(drain_s)
        return await rss.stop(), taken
    finally:
        await stage.close([queue])


async def memory(smoke: bool) -> dict[str, Any]:
    """Peak RSS per process with a small and a large backlog queued, one worker draining;
    the original, the baseline, with the same backlogs."""
    small, large = (100, 1000) if smoke else (5000, 50000)
    drain = 2 if smoke else 20
    low: dict[str, float] = {}
    high: dict[str, float] = {}
    taken = []
    for count, peaks in ((small, low), (large, high)):
        log(f"memory: project, backlog of {count} tasks")
        peaks |= await _backlog_peak(count, drain)
        log(f"memory: original, backlog of {count} tasks")
        original, took = await _original_backlog_peak(count, drain)
        peaks |= original
        taken.append(took)
    return {
        "backlogs": [small, large],
        "peak_rss_mb_small": low,
        "peak_rss_mb_large": high,
        "growth_ratio": {k: round(high[k] / low[k], 2) for k in low if low[k]},
        "original_tasks_taken_in": taken,
        "targets": {"peak_rss_mb": 250},
    }


SCENARIOS = {
    "throughput": throughput,
    "utilization": utilization,
    "storm": storm,
    "latency": latency,
    "memory": memory,
}
