"""Property-based requests generated from the admin app's own OpenAPI document: whatever
they send, the app answers without a server error."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, given, settings

from services.admin.app import create_app
from services.provider.simulator.server import free_port
from services.runtime import Wiring


@pytest.fixture(scope="module")
def admin_url(service: Wiring) -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(service.settings), host="127.0.0.1", port=port, log_level="error")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "the admin app did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def openapi(admin_url: str) -> Any:
    return schemathesis.openapi.from_url(f"{admin_url}/openapi.json")


def test_no_generated_request_causes_a_server_error(openapi: Any) -> None:
    operations = [result.ok() for result in openapi.get_all_operations()]
    assert len(operations) >= 7, "every route is in the OpenAPI document"
    calls = 0
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
        def no_server_error(case: Any) -> None:
            nonlocal calls
            response = case.call()
            calls += 1
            assert response.status_code < 500, (
                f"{case.method} {case.formatted_path}: {response.status_code} {response.text}"
            )

        no_server_error()
    assert calls > 5 * len(operations), "the generator really exercised the routes"
