"""Provider-error classification and retry delays, by table and by property."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from statemachine import (
    ErrorKind,
    FailNow,
    ProviderFailure,
    RetryLater,
    Transport,
    classify,
    decide,
    retry_delay_s,
)

K = ErrorKind

# Every row of PROVIDER.md's error table: (HTTP status, code) -> class.
PROVIDER_TABLE = [
    (400, "InvalidParameter", K.INVALID_REQUEST),
    (400, "DataInspectionFailed", K.CONTENT_REJECTED),
    (400, "IPInfringementSuspect", K.CONTENT_REJECTED),
    (400, "Arrearage", K.BILLING),
    (401, "InvalidApiKey", K.AUTH),
    (403, "AccessDenied", K.AUTH),
    (403, "AccessDenied.Unpurchased", K.AUTH),
    (403, "Model.AccessDenied", K.AUTH),
    (404, "ModelNotFound", K.INVALID_REQUEST),
    (404, "NotFound", K.INVALID_REQUEST),
    (429, "Throttling", K.RATE_LIMITED),
    (429, "Throttling.RateQuota", K.RATE_LIMITED),
    (429, "Throttling.BurstRate", K.RATE_LIMITED),
    (429, "Throttling.AllocationQuota", K.RATE_LIMITED),
    (429, "PostpaidBillOverdue", K.BILLING),
    (429, "PrepaidBillOverdue", K.BILLING),
    (429, "CommodityNotPurchased", K.BILLING),
    (500, "InternalError", K.TRANSIENT),
    (500, "InternalError.Algo", K.TRANSIENT),
    (500, "SystemError", K.TRANSIENT),
    (500, "ModelServiceFailed", K.TRANSIENT),
    (500, "RequestTimeOut", K.TRANSIENT),
    (503, "ModelUnavailable", K.TRANSIENT),
    (503, "ModelServingError", K.TRANSIENT),
    (502, None, K.TRANSIENT),
    (504, None, K.TRANSIENT),
]


@pytest.mark.parametrize(("status", "code", "kind"), PROVIDER_TABLE)
def test_each_documented_provider_error_gets_its_class(
    status: int, code: str | None, kind: ErrorKind
) -> None:
    assert classify(ProviderFailure(status, code, "m")) is kind


@pytest.mark.parametrize(("status", "code", "kind"), PROVIDER_TABLE)
@pytest.mark.parametrize("other_status", [None, 200, 400, 429, 500, 503])
def test_the_code_decides_whatever_the_status_says(
    status: int, code: str | None, kind: ErrorKind, other_status: int | None
) -> None:
    if code is None:
        return
    assert classify(ProviderFailure(other_status, code, "m")) is kind


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, K.INVALID_REQUEST),
        (401, K.AUTH),
        (403, K.AUTH),
        (404, K.INVALID_REQUEST),
        (408, K.TRANSIENT),
        (429, K.RATE_LIMITED),
        (500, K.TRANSIENT),
        (502, K.TRANSIENT),
        (503, K.TRANSIENT),
        (504, K.TRANSIENT),
    ],
)
def test_an_unknown_code_falls_back_to_the_http_status(status: int, kind: ErrorKind) -> None:
    assert classify(ProviderFailure(status, "SomethingNew", "m")) is kind


@pytest.mark.parametrize("transport", list(Transport))
def test_transport_failures_are_transient(transport: Transport) -> None:
    assert classify(ProviderFailure(transport=transport, message="boom")) is K.TRANSIENT


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        ("Task was cancelled by the user", K.INVALID_REQUEST),
        ("The API key is wrong", K.AUTH),
        ("Account has insufficient balance", K.BILLING),
    ],
)
def test_the_original_fatal_phrases_fail_at_once(message: str, kind: ErrorKind) -> None:
    assert classify(ProviderFailure(500, None, message)) is kind


@pytest.mark.parametrize(
    ("kind", "delays"),
    [
        (K.RATE_LIMITED, [30, 60, 120]),
        (K.TRANSIENT, [2, 4, 8]),
    ],
)
def test_retry_delays_double_from_their_base(kind: ErrorKind, delays: list[int]) -> None:
    assert [retry_delay_s(kind, r) for r in range(3)] == delays


def test_a_throttled_image_walks_the_three_rate_limit_tiers_then_gives_up() -> None:
    failure = ProviderFailure(429, "Throttling.RateQuota", "Requests rate limit exceeded")
    decisions = [decide(failure, retries_done=r) for r in range(4)]
    assert decisions[:3] == [
        RetryLater(K.RATE_LIMITED, retry=1, tier=0, delay_s=30),
        RetryLater(K.RATE_LIMITED, retry=2, tier=1, delay_s=60),
        RetryLater(K.RATE_LIMITED, retry=3, tier=2, delay_s=120),
    ]
    assert decisions[3] == FailNow(K.RATE_LIMITED, exhausted=True)
    assert all(d.reason == "rate_limited" for d in decisions[:3] if isinstance(d, RetryLater))


@pytest.mark.parametrize(
    ("status", "code", "retries_done", "retry_after_s", "delay_s"),
    [
        (429, "Throttling", 0, None, 30),
        (429, "Throttling", 0, 30.0, 30),
        (429, "Throttling", 0, 30.5, 60),
        (429, "Throttling", 0, 45.0, 60),
        (429, "Throttling", 0, 3600.0, 120),
        (429, "Throttling", 2, 1.0, 120),
        (429, "Throttling", 1, 0.0, 60),
        (503, "ModelUnavailable", 0, 3.0, 4),
        (503, "ModelUnavailable", 0, 60.0, 8),
    ],
)
def test_a_retry_after_moves_the_retry_to_the_first_tier_that_waits_long_enough(
    status: int, code: str, retries_done: int, retry_after_s: float | None, delay_s: int
) -> None:
    failure = ProviderFailure(status, code, "m", retry_after_s=retry_after_s)
    decision = decide(failure, retries_done)
    assert isinstance(decision, RetryLater)
    assert (decision.retry, decision.delay_s) == (retries_done + 1, delay_s)


def test_a_retry_after_never_makes_a_fatal_error_retryable() -> None:
    failure = ProviderFailure(429, "PostpaidBillOverdue", "m", retry_after_s=30.0)
    assert decide(failure, 0) == FailNow(K.BILLING, exhausted=False)


def test_billing_sent_as_429_fails_on_the_first_attempt() -> None:
    assert decide(ProviderFailure(429, "PostpaidBillOverdue", "m"), 0) == FailNow(
        K.BILLING, exhausted=False
    )


def test_the_error_text_keeps_the_original_format() -> None:
    failure = ProviderFailure(429, "Throttling.RateQuota", "Requests rate limit exceeded")
    assert failure.describe() == (
        "provider error: 429 Throttling.RateQuota - Requests rate limit exceeded"
    )
    assert ProviderFailure(transport=Transport.TIMEOUT, message="read timed out").describe() == (
        "provider error: timeout - read timed out"
    )


@given(
    status=st.one_of(st.none(), st.integers(100, 599)),
    code=st.one_of(st.none(), st.sampled_from([c for _, c, _ in PROVIDER_TABLE if c]), st.text()),
    message=st.text(max_size=50),
    retries=st.integers(0, 10),
    max_retries=st.integers(0, 5),
)
def test_decide_never_retries_past_the_limit_nor_retries_a_fatal_error(
    status: int | None, code: str | None, message: str, retries: int, max_retries: int
) -> None:
    failure = ProviderFailure(status, code, message)
    decision = decide(failure, retries, max_retries)
    kind = classify(failure)
    if isinstance(decision, RetryLater):
        assert kind.retryable and retries < max_retries
        assert decision.delay_s in ((30, 60, 120) if kind is K.RATE_LIMITED else (2, 4, 8))
        assert decision.tier == min(retries, 2)
    else:
        assert decision.kind is kind
        assert decision.exhausted == kind.retryable
