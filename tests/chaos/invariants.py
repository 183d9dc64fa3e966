"""The invariants a chaos run must keep, read after it settles: every task terminal and
complete, nothing billed beyond what the service reported in doubt, every task's events
gapless and ending in its status, exactly the poison in the dead queue, no outbox row
left, and no secret in anything the run produced."""

from __future__ import annotations

from tests.chaos.harness import ADMIN_TOKEN, FINAL_EVENT, PROVIDER_KEY, TERMINAL, Chaos


async def check(chaos: Chaos) -> list[str]:
    """The invariants; each broken one is a line."""
    problems: list[str] = []
    conn = await chaos.connect_db()
    try:
        rows = await conn.fetch("SELECT id, status, version, image_count, images_ready FROM tasks")
        stored = dict(
            await conn.fetch(
                "SELECT task_id, count(*) FROM task_images WHERE url IS NOT NULL GROUP BY task_id"
            )
        )
        doubled = await conn.fetchval(
            "SELECT count(*) FROM (SELECT task_id, index FROM task_images"
            " WHERE url IS NOT NULL GROUP BY 1, 2 HAVING count(*) > 1) d"
        )
        outbox = await conn.fetchval("SELECT count(*) FROM outbox")
        # Submits the service itself reports as possibly billed without a recorded
        # answer (a kill between the provider's answer and the write).
        in_doubt = dict(
            await conn.fetch(
                "SELECT task_id, sum(unrecorded_submits"
                " + (submit_started_at IS NOT NULL)::int) FROM task_images GROUP BY task_id"
            )
        )
    finally:
        await conn.close()
    tasks = {r["id"]: r for r in rows}
    if missing := set(chaos.prompts) - set(tasks):
        problems.append(f"{len(missing)} published tasks were never created")
    if doubled:
        problems.append(f"{doubled} images stored twice under one index")
    if outbox:
        problems.append(f"{outbox} outbox rows left unsent")
    billed = chaos.sim.sim.stats.billed_by_prompt
    for task_id, row in tasks.items():
        status, count = row["status"], row["image_count"]
        if status not in TERMINAL:
            problems.append(f"{task_id} is still {status}")
            continue
        paid = billed.get(chaos.prompts.get(task_id, ""), 0)
        # Every image billed beyond those asked must be one the service reported.
        allowed = count + in_doubt.get(task_id, 0)
        if status == "IMAGES_READY" and (stored.get(task_id, 0) != count or paid < count):
            problems.append(
                f"{task_id}: {stored.get(task_id, 0)} stored, {paid} billed, {count} asked"
            )
        if paid > allowed:
            problems.append(f"{task_id}: {paid} images billed for {count}, none reported")
        chaos.counters.unrecorded += in_doubt.get(task_id, 0)
        versions = {e["version"] for e in chaos.events.get(task_id, []) if e["version"] is not None}
        if versions != set(range(1, row["version"] + 1)):
            gaps = sorted(set(range(1, row["version"] + 1)) - versions)
            problems.append(f"{task_id}: events miss versions {gaps[:5]} of {row['version']}")
        last = [e for e in chaos.events.get(task_id, []) if e["version"] == row["version"]]
        if last and last[0]["event_type"] != FINAL_EVENT[status]:
            problems.append(f"{task_id}: last event {last[0]['event_type']} but status {status}")
    dead = await chaos.dead_letters()
    if set(dead) != chaos.poison_ids:
        unexpected = {k: v for k, v in dead.items() if k not in chaos.poison_ids}
        lost = chaos.poison_ids - set(dead)
        if unexpected:
            problems.append(f"unexpected dead letters: {list(unexpected.values())[:5]}")
        if lost:
            problems.append(f"{len(lost)} poison messages were not parked")
    if crashed := [reason for reason in dead.values() if reason.startswith("internal error")]:
        problems.append(f"poison parked as a handler's failure, not refused: {crashed[:5]}")
    if leaks := secrets_leaked(chaos):
        problems.append(f"secrets found in: {leaks}")
    return problems


def secrets_leaked(chaos: Chaos) -> list[str]:
    places = []
    for path in chaos.log_dir.glob("*.log"):
        text = path.read_text(errors="replace")
        if PROVIDER_KEY in text or ADMIN_TOKEN in text:
            places.append(path.name)
    for i, text in enumerate(chaos.produced):
        if PROVIDER_KEY in text or ADMIN_TOKEN in text:
            places.append(f"output #{i}")
    return places
