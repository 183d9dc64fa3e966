"""Defensive parsing of DashScope answers: fields may be missing or spelled otherwise."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.provider.dashscope import (
    ProviderTaskStatus,
    _http_error,
    _json,
    parse_submit,
    parse_task,
    retry_after_s,
)
from services.provider.errors import ProviderTransportError
from services.provider.transport import Reply


def test_an_error_body_with_msg_instead_of_message_is_read() -> None:
    error = _http_error(Reply(400, "Bad Request", b'{"code": "InvalidParameter", "msg": "bad n"}'))
    assert (error.status, error.code, error.message, error.request_id) == (
        400,
        "InvalidParameter",
        "bad n",
        None,
    )


def test_an_error_without_a_json_body_keeps_the_status() -> None:
    error = _http_error(Reply(502, "Bad Gateway", b"<html>Bad Gateway</html>"))
    assert error.status == 502 and error.code is None and "non-JSON" in error.message


def test_an_error_body_nested_too_deep_to_read_reads_as_non_json() -> None:
    body = b'{"code": "Throttling", "d": ' + b"[" * 9000 + b"]" * 9000 + b"}"
    error = _http_error(Reply(429, "Too Many Requests", body))
    assert error.status == 429 and error.code is None and "non-JSON" in error.message


def test_a_text_no_database_could_store_is_left_out_and_the_rest_of_the_answer_read() -> None:
    body = b'{"code": "Throttling", "message": "\\ud800 cannot be stored", "code": "Throttling"}'
    error = _http_error(Reply(429, "Too Many Requests", body))
    assert (error.code, error.message) == ("Throttling", "Too Many Requests")
    # A billed submit's answer: a repeated key does not hide its task id.
    submitted = parse_submit(_json(b'{"output": {"task_id": "t-1", "task_id": "t-1"}}'))
    assert submitted.task_id == "t-1"
    with pytest.raises(ProviderTransportError) as raised:
        parse_submit({"output": {"task_id": "t-\udfff"}})
    assert raised.value.ambiguous, "a task that cannot be stored cannot be polled later"


NOW = datetime(2026, 12, 3, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("45", 45.0),
        (" 7 ", 7.0),
        ("0", 0.0),
        ("Thu, 03 Dec 2026 12:00:30 GMT", 30.0),
        ("Thu, 03 Dec 2026 11:59:00 GMT", 0.0),
        ("-5", None),
        ("1.5", None),
        ("soon", None),
        ("Thu, 03 Dec 2026 12:00:30 -0000", None),
        ("", None),
        (None, None),
    ],
)
def test_a_retry_after_is_read_as_seconds_or_as_a_date(
    header: str | None, seconds: float | None
) -> None:
    assert retry_after_s(header, NOW) == seconds


def test_an_error_answer_carries_its_retry_after_to_the_retry_policy() -> None:
    error = _http_error(Reply(429, "Too Many Requests", b'{"code": "Throttling"}', "45"))
    assert error.retry_after_s == 45.0 and error.failure.retry_after_s == 45.0


def test_a_query_answer_with_only_id_and_status_is_enough() -> None:
    result = parse_task({"output": {"task_id": "t1", "task_status": "RUNNING"}})
    assert result.status is ProviderTaskStatus.RUNNING and result.results == ()


@pytest.mark.parametrize("results", [5, "a string", {"url": "https://x/1.png"}, None, True])
def test_results_that_are_not_a_list_read_as_none_rather_than_an_error(results: object) -> None:
    answer = {"output": {"task_id": "t1", "task_status": "SUCCEEDED", "results": results}}
    assert parse_task(answer).results == ()


@pytest.mark.parametrize("status", [[], {}, 5, None, "RUNNING?"])
def test_a_submit_answer_with_an_odd_status_is_still_a_task_to_poll(status: object) -> None:
    submitted = parse_submit({"output": {"task_id": "t1", "task_status": status}})
    assert (submitted.task_id, submitted.status) == ("t1", ProviderTaskStatus.PENDING)


@pytest.mark.parametrize(
    "body",
    [None, {}, {"output": []}, {"output": {"task_id": 5}}, {"output": {"task_id": "x" * 129}}],
)
def test_a_submit_answer_without_a_usable_task_id_may_have_been_billed(
    body: dict[str, object] | None,
) -> None:
    with pytest.raises(ProviderTransportError) as raised:
        parse_submit(body)
    assert raised.value.ambiguous


def test_partial_results_keep_failed_entries_apart_from_urls() -> None:
    result = parse_task(
        {
            "output": {
                "task_id": "t1",
                "task_status": "SUCCEEDED",
                "results": [
                    {"url": "https://x/1.png"},
                    {"code": "DataInspectionFailed", "message": "m"},
                ],
            },
            "usage": {"image_count": 1},
        }
    )
    assert result.urls == ["https://x/1.png"] and result.billed_images == 1
    assert result.results[1].code == "DataInspectionFailed"


def test_without_history_polling_follows_the_sdk_rhythm_from_an_immediate_query() -> None:
    from itertools import islice

    from services.provider.polling import PollPlanner

    assert list(islice(PollPlanner().delays(elapsed_s=0.0), 11)) == [
        0,
        1,
        1,
        2,
        2,
        2,
        4,
        4,
        4,
        5,
        5,
    ]


def test_with_history_the_first_poll_goes_out_when_tasks_usually_finish() -> None:
    from itertools import islice

    from services.provider.polling import PollPlanner

    planner = PollPlanner()
    planner.observe(10.0)
    delays = list(islice(planner.delays(elapsed_s=0.5), 14))
    # The expected 10 s and 0.5 % slack, less the 0.5 s already gone:
    assert delays[0] == pytest.approx(9.55)
    assert delays[1:13] == [0.2] * 12 and delays[13] == 1
    assert list(islice(planner.delays(elapsed_s=None), 2)) == [0, 1], (
        "a resumed poll knows no start"
    )


def test_tasks_that_finish_at_once_are_polled_at_once() -> None:
    from services.provider.polling import PollPlanner

    planner = PollPlanner()
    planner.observe(0.0)
    delays = planner.delays(elapsed_s=0.002)
    assert (next(delays), next(delays)) == (0.0, 0.01), "no slack to wait, then short steps"


def test_the_expected_duration_follows_recent_tasks() -> None:
    from services.provider.polling import PollPlanner

    planner = PollPlanner()
    for duration in (10.0, 10.0, 20.0):
        planner.observe(duration)
    assert planner.expected_s == 12.0


def test_the_provider_run_time_comes_from_its_own_timestamps() -> None:
    result = parse_task(
        {
            "output": {
                "task_id": "t1",
                "task_status": "SUCCEEDED",
                "submit_time": "2025-01-08 16:03:59.840",
                "end_time": "2025-01-08 16:04:05.340",
            },
        }
    )
    assert result.run_s == 5.5
    assert parse_task({"output": {"task_id": "t", "task_status": "SUCCEEDED"}}).run_s is None


@pytest.mark.parametrize(
    ("submit_time", "end_time"),
    [
        ("yesterday", "2025-01-08 16:04:05.340"),
        ("2025-01-08 16:03:59.840+08:00", "2025-01-08 16:04:05.340"),
        (None, "2025-01-08 16:04:05.340"),
        ("2025-01-08 16:04:05.340", "2025-01-08 16:03:59.840"),
    ],
)
def test_timestamps_that_make_no_duration_give_no_run_time_rather_than_an_error(
    submit_time: object, end_time: object
) -> None:
    output = {"task_id": "t", "task_status": "SUCCEEDED"}
    result = parse_task({"output": output | {"submit_time": submit_time, "end_time": end_time}})
    assert result.status.value == "SUCCEEDED"
    assert result.run_s is None
