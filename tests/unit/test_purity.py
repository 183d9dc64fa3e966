"""The state machine package stays pure: importing it loads no I/O library."""

from __future__ import annotations

import subprocess
import sys

IO_MODULES = ("sqlalchemy", "asyncpg", "aio_pika", "aiormq", "httpx", "fastapi", "socket")


def test_importing_the_state_machine_loads_no_io_library() -> None:
    code = (
        "import sys, statemachine, statemachine.machine, statemachine.retry\n"
        "statemachine.apply_trigger(statemachine.TaskModel(statemachine.TaskStatus.PENDING),"
        " statemachine.Trigger.START)\n"
        f"print(','.join(m for m in {IO_MODULES!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_the_state_machine_sources_import_only_the_standard_library_and_transitions() -> None:
    import ast
    from pathlib import Path

    import statemachine

    allowed = {"__future__", "dataclasses", "enum", "functools", "transitions", "statemachine"}
    for path in Path(statemachine.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name.split(".")[0] in allowed, f"{path.name} imports {name}"
