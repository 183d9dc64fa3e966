"""A JSON log is one JSON object per line, the libraries' lines and tracebacks included.
Run in a process of its own: logging is configured once per process."""

from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = """
import logging
from services.logs import get_logger, setup_logging
setup_logging("INFO", "json")
get_logger("imagegen.test").info("ours", action="probe")
try:
    1 / 0
except ZeroDivisionError:
    logging.getLogger("aio_pika.robust_connection").exception("reconnect failed")
"""


def test_library_lines_and_their_tracebacks_are_json_objects_with_an_action() -> None:
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60, check=True
    )
    ours, theirs = (json.loads(line) for line in run.stderr.splitlines())
    assert (ours["action"], ours["event"]) == ("probe", "ours")
    assert (theirs["action"], theirs["logger"]) == ("library", "aio_pika.robust_connection")
    assert theirs["level"] == "error" and "ZeroDivisionError" in theirs["exception"]
