"""The long chaos run: python -m bench.chaos [--minutes 10]

A steady flow of tasks for the given time while workers are killed (-9) and restarted
every ~25 s, RabbitMQ and PostgreSQL are each restarted, the provider misbehaves and
poison is injected; then the invariants of tests/chaos are checked. The figures are
written to docs/RELIABILITY.md."""

from __future__ import annotations

import argparse
import asyncio
import random
import subprocess
import time
from pathlib import Path

from bench.harness import log
from services.config import load_settings
from services.provider.simulator import SimConfig, running_simulator
from tests.chaos.harness import PROVIDER_CHAOS, PROVIDER_KEY, Chaos
from tests.chaos.invariants import check
from tests.services import DEFAULT_AMQP_URL, DEFAULT_DATABASE_URL

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "docs" / "RELIABILITY.md"
MARK = "<!-- long chaos run -->"


async def main(minutes: float) -> dict[str, object]:
    base = load_settings(
        database_url=DEFAULT_DATABASE_URL,
        amqp_url=DEFAULT_AMQP_URL,
        retry_ttl_scale=0.01,
        poll_schedule_scale=0.05,
        dashscope_api_key=PROVIDER_KEY,
    )
    async with running_simulator(SimConfig(api_key=PROVIDER_KEY, latency_s=0.2)) as sim:
        chaos = await Chaos.open(base, sim, "long")
        try:
            await chaos.start_all(workers=3, relays=2)
            sim.sim.configure(PROVIDER_CHAOS)
            await chaos.inject_poison()
            started = time.monotonic()
            end = started + minutes * 60
            next_kill = started + 25
            broker_at, database_at = (
                started + (end - started) / 3,
                started + 2 * (end - started) / 3,
            )
            while time.monotonic() < end:
                await chaos.create_tasks(2)
                now = time.monotonic()
                if now >= next_kill:
                    killed = await chaos.kill_random_worker()
                    log(f"kill -9 {killed} ({chaos.counters.kills} so far)")
                    next_kill = now + random.uniform(20, 30)
                if broker_at and now >= broker_at:
                    log("restarting RabbitMQ")
                    await chaos.restart_broker(down_s=5)
                    broker_at = 0
                if database_at and now >= database_at:
                    log("restarting PostgreSQL")
                    await chaos.restart_database()
                    database_at = 0
                await asyncio.sleep(1)
            sim.sim.configure({k: 0.0 for k in PROVIDER_CHAOS if k.startswith("p_")})
            log("settling")
            settled = await chaos.wait_settled(600)
            problems = await check(chaos)
            stats = sim.sim.stats
            figures: dict[str, object] = {
                "minutes": round((time.monotonic() - started) / 60, 1),
                "tasks": chaos.counters.tasks,
                "duplicate deliveries": chaos.counters.duplicates,
                "cancels": chaos.counters.cancels,
                "poison messages": chaos.counters.poison,
                "worker kills (-9)": chaos.counters.kills,
                "worker restarts": chaos.counters.restarts,
                "RabbitMQ restarts": chaos.counters.broker_restarts,
                "PostgreSQL restarts": chaos.counters.database_restarts,
                "provider submits": stats.submits,
                "provider faults injected": sum(stats.errors_by_code.values()),
                "images billed": stats.billed_images,
                "submits reported unrecorded": chaos.counters.unrecorded,
                "settled": settled,
                "invariant violations": len(problems),
            }
            for problem in problems:
                log(f"VIOLATION: {problem}")
            return figures | {"problems": problems}
        finally:
            await chaos.close()


def _commit() -> str:
    """The code the run exercised, so a report can be traced to it."""
    try:
        found = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        )
    except OSError:
        return "an unknown commit"
    return found.stdout.strip() or "an unknown commit"


def write_report(figures: dict[str, object], commit: str) -> None:
    rows = "\n".join(f"| {k} | {v} |" for k, v in figures.items() if k != "problems")
    found = figures.get("problems")
    problems = found if isinstance(found, list) else []
    section = (
        f"{MARK}\n## Latest long run\n\n"
        f"`python -m bench.chaos`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"on {commit}, on the 2-core development machine.\n\n| figure | value |\n|---|---|\n"
        f"{rows}\n\n"
        + ("".join(f"- {p}\n" for p in problems) if problems else "No invariant was broken.\n")
    )
    text = REPORT.read_text() if REPORT.exists() else ""
    text = text.split(MARK)[0].rstrip() + "\n\n" + section
    REPORT.write_text(text)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.chaos")
    parser.add_argument("--minutes", type=float, default=10)
    args = parser.parse_args()
    commit = _commit()
    result = asyncio.run(main(args.minutes))
    write_report(result, commit)
    log(f"figures: {result}")
