"""The CLI refuses bad arguments with a usage error that names the flag, not a traceback,
and shows what it reads as text, never as markup."""

from __future__ import annotations

from typer.testing import CliRunner

from services.cli import app
from services.cli.producer import event_line


def test_an_out_of_range_simulator_knob_is_a_usage_error_naming_its_flag() -> None:
    args = ["simulator", "--p-429", "2", "--latency", "-1"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 2
    assert "--p-429=2.0" in result.output and "--latency=-1.0" in result.output
    assert "Traceback" not in result.output


def test_a_wait_of_no_time_is_a_usage_error_before_anything_is_published() -> None:
    for timeout in ("-5", "0"):
        result = CliRunner().invoke(
            app, ["submit", "a cat", "--wait", "--timeout", timeout], env={"COLUMNS": "200"}
        )
        assert result.exit_code == 2 and "--timeout" in result.output, result.output


def test_an_event_line_says_why_a_task_failed_and_keeps_brackets_as_written() -> None:
    event = {
        "occurred_at": "2026-11-27T10:00:15.123Z",
        "event_type": "task.status.failed",
        "task_id": "t-1",
        "status": "FAILED",
        "version": 4,
        "images_ready": 1,
        "image_count": 4,
        "error": {"code": "provider_error", "message": "bad [/b] input"},
    }
    assert event_line(event).plain == (
        "2026-11-27T10:00:15.123Z  task.status.failed  t-1  FAILED  v4  1/4  "
        "provider_error: bad [/b] input"
    )


def test_an_event_line_of_a_retry_names_the_image_the_reason_and_the_delay() -> None:
    event = {
        "event_type": "task.image.retrying",
        "task_id": "t-2",
        "status": "GENERATING_IMAGES",
        "version": 3,
        "image_count": 1,
        "retry": {"index": 0, "reason": "rate_limited", "attempt": 1, "delay_s": 30},
    }
    assert event_line(event).plain.endswith(
        "GENERATING_IMAGES  v3  0/1  image 0: rate_limited, retry 1 in 30 s"
    )


def test_an_event_line_of_a_rejected_request_shows_that_it_has_no_version() -> None:
    event = {
        "event_type": "task.rejected",
        "task_id": "t-3",
        "status": None,
        "version": None,
        "error": {"code": "invalid_request", "message": "prompt must not be blank"},
    }
    assert event_line(event).plain == (
        "?  task.rejected  t-3  -  -  invalid_request: prompt must not be blank"
    )
