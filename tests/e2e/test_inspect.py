"""``imagegen status``, run as an operator runs it: a task is shown as it was written,
whatever its prompt holds, with every image's URL whole on a narrow terminal."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

from services.runtime import Wiring
from tests.e2e.conftest import Bus


def imagegen(service: Wiring, *args: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | {
        "IMAGEGEN_DATABASE_URL": service.settings.database_url,
        "COLUMNS": "60",
    }
    return subprocess.run(
        [sys.executable, "-c", "from services.cli import main; main()", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


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


async def test_status_of_an_id_with_brackets_says_there_is_no_such_task(
    service: Wiring,
) -> None:
    shown = await asyncio.to_thread(imagegen, service, "status", "[/x]")
    assert shown.returncode == 1
    assert shown.stdout.strip() == "no task [/x]"
