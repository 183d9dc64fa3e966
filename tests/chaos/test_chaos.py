"""The CI-sized chaos runs: real processes, injected faults, and invariants checked after
each run (every task terminal, nothing billed twice, events gapless, exactly the poison in
the dead queue, no outbox row left, no secret in anything the run produced)."""

from __future__ import annotations

import asyncio
import signal
import time

from tests.chaos.harness import ADMIN_TOKEN, PROVIDER_CHAOS, Chaos
from tests.chaos.invariants import check


async def _hostile_http(chaos: Chaos) -> None:
    assert (await chaos.http("GET", "/api/queue/status")).status_code == 401
    wrong = await chaos.http("GET", "/api/queue/status", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    good = await chaos.http(
        "GET", "/api/queue/status", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    assert good.status_code == 200
    huge = await chaos.http(
        "POST",
        "/api/tasks",
        content=b"{" + b" " * (2 * 1024 * 1024) + b"}",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "content-type": "application/json"},
    )
    assert huge.status_code == 413
    sql = await chaos.http(
        "GET", "/api/tasks/x'%20OR%201=1--", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    assert sql.status_code == 404
    assert (await chaos.http("GET", "/metrics")).status_code == 200


async def test_killed_workers_and_provider_faults_lose_nothing_and_pay_nothing_twice(
    chaos: Chaos,
) -> None:
    await chaos.start_all(workers=3, relays=2)
    chaos.sim.sim.configure(PROVIDER_CHAOS)
    producing = asyncio.create_task(chaos.create_tasks(60))
    await chaos.inject_poison()
    await _hostile_http(chaos)
    await chaos.create_over_http(10)
    while not producing.done() or chaos.counters.kills < 6:
        await asyncio.sleep(1.5)
        await chaos.kill_random_worker()
    await producing
    chaos.sim.sim.configure({k: 0.0 for k in PROVIDER_CHAOS if k.startswith("p_")})

    assert await chaos.wait_settled(180), "the run did not settle"
    assert await check(chaos) == []
    assert chaos.counters.kills >= 6


async def test_a_rabbitmq_restart_mid_run_loses_nothing(chaos: Chaos) -> None:
    await chaos.start_all(workers=2, relays=1)
    chaos.sim.sim.configure({"latency_s": 0.1})
    await chaos.create_tasks(30, cancel_every=10)
    await chaos.inject_poison()
    await asyncio.sleep(0.5)

    await chaos.stop_broker()
    down = await chaos.http("GET", "/readyz")
    assert down.status_code == 503 and "rabbitmq" in down.json()["checks"]
    await asyncio.sleep(2)  # work in flight meets the outage
    await chaos.start_broker()
    await chaos.create_tasks(10)

    assert await chaos.wait_settled(180), "the run did not settle after the broker came back"
    assert (await chaos.http("GET", "/readyz")).status_code == 200
    assert await check(chaos) == []


async def test_a_postgresql_restart_mid_run_loses_nothing(chaos: Chaos) -> None:
    await chaos.start_all(workers=2, relays=1)
    chaos.sim.sim.configure({"latency_s": 0.1})
    await chaos.create_tasks(30, cancel_every=10)
    await chaos.inject_poison()
    await asyncio.sleep(0.5)

    await chaos.restart_database()
    await chaos.create_tasks(10)

    assert await chaos.wait_settled(180), "the run did not settle after the database came back"
    assert await check(chaos) == []


async def test_sigterm_during_a_burst_loses_nothing_and_exits_within_the_grace_period(
    chaos: Chaos,
) -> None:
    await chaos.start_all(workers=1, relays=1)
    chaos.sim.sim.configure({"latency_s": 0.3})
    await chaos.create_tasks(20, cancel_every=1000)
    await asyncio.sleep(1.0)

    worker = chaos.processes["worker0"]
    started = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    await asyncio.to_thread(worker.wait, 30)
    assert worker.returncode == 0
    assert time.monotonic() - started < 5 + 3, "exited within the 5 s grace (and a margin)"

    chaos.restart("worker0")
    assert await chaos.wait_settled(120)
    assert await check(chaos) == []
