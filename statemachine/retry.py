"""What to do when a provider call fails: classify the failure, then retry or fail.

DashScope's error code decides first and the HTTP status second, because the two disagree
on purpose: billing errors arrive as 429 (``PostpaidBillOverdue``) and an overdue account as
400 (``Arrearage``). Delays follow the original pipeline: 30/60/120 s after throttling,
2/4/8 s after any other transient failure. A ``Retry-After`` the provider sends (DashScope
documents none) moves the retry to a later tier of its kind when the tier's delay is
shorter, so the longest tier (120 s, or 8 s) is the cap: the delays stay the topology's.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Transport(StrEnum):
    """A failure below HTTP: no provider answer was read."""

    CONNECT = "connect"
    """Nothing reached the provider (refused, DNS, connect timeout)."""
    TIMEOUT = "timeout"
    """The request may have reached the provider, but no answer came in time."""
    PROTOCOL = "protocol"
    """The connection broke or the answer could not be read."""


class ErrorKind(StrEnum):
    """Classes of provider failure; the value is the public ``error.code``."""

    RATE_LIMITED = "provider_rate_limited"
    TRANSIENT = "provider_unavailable"
    INVALID_REQUEST = "provider_invalid_request"
    CONTENT_REJECTED = "provider_content_rejected"
    AUTH = "provider_auth_failed"
    BILLING = "provider_billing"

    @property
    def retryable(self) -> bool:
        return self in (ErrorKind.RATE_LIMITED, ErrorKind.TRANSIENT)


_CODES: dict[str, ErrorKind] = {
    "InvalidParameter": ErrorKind.INVALID_REQUEST,
    "UnsupportedOperation": ErrorKind.INVALID_REQUEST,
    "DataInspectionFailed": ErrorKind.CONTENT_REJECTED,
    "IPInfringementSuspect": ErrorKind.CONTENT_REJECTED,
    "InvalidApiKey": ErrorKind.AUTH,
    "AccessDenied": ErrorKind.AUTH,
    "AccessDenied.Unpurchased": ErrorKind.AUTH,
    "Model.AccessDenied": ErrorKind.AUTH,
    "ModelNotFound": ErrorKind.INVALID_REQUEST,
    "NotFound": ErrorKind.INVALID_REQUEST,
    "Arrearage": ErrorKind.BILLING,
    "PostpaidBillOverdue": ErrorKind.BILLING,
    "PrepaidBillOverdue": ErrorKind.BILLING,
    "CommodityNotPurchased": ErrorKind.BILLING,
    "Throttling": ErrorKind.RATE_LIMITED,
    "InternalError": ErrorKind.TRANSIENT,
    "SystemError": ErrorKind.TRANSIENT,
    "ModelServiceFailed": ErrorKind.TRANSIENT,
    "RequestTimeOut": ErrorKind.TRANSIENT,
    "ModelUnavailable": ErrorKind.TRANSIENT,
    "ModelServingError": ErrorKind.TRANSIENT,
}

# The original pipeline failed at once on these phrases, whatever the status.
_FATAL_PHRASES: tuple[tuple[str, ErrorKind], ...] = (
    ("insufficient balance", ErrorKind.BILLING),
    ("api key", ErrorKind.AUTH),
    ("apikey", ErrorKind.AUTH),
    ("cancelled", ErrorKind.INVALID_REQUEST),
    ("canceled", ErrorKind.INVALID_REQUEST),
)

RATE_LIMIT_DELAY_BASE_S = 30
RETRY_DELAY_BASE_S = 2
#: Delay tiers exist for three retries; later retries (a larger MAX_RETRIES) reuse the last.
TIER_COUNT = 3


@dataclass(frozen=True)
class ProviderFailure:
    """One failed provider call, as far as it is known."""

    http_status: int | None = None
    code: str | None = None
    message: str = ""
    transport: Transport | None = None
    retry_after_s: float | None = None
    """How long the provider asked to be left alone (its ``Retry-After``), if it said."""

    def describe(self) -> str:
        """The seed's error text, e.g. ``provider error: 429 Throttling.RateQuota - …``."""
        if self.transport is not None and self.http_status is None:
            head = self.transport.value
        else:
            head = " ".join(str(p) for p in (self.http_status, self.code) if p is not None)
        return f"provider error: {head or 'unknown'} - {self.message or 'no message'}"


def _kind_of_code(code: str) -> ErrorKind | None:
    # Codes are dotted families: Throttling.RateQuota, InternalError.Algo, …
    while code:
        if code in _CODES:
            return _CODES[code]
        code = code.rpartition(".")[0]
    return None


def classify(failure: ProviderFailure) -> ErrorKind:
    """The class of a failure: by code first, then by HTTP status, then by transport."""
    if failure.code and (kind := _kind_of_code(failure.code)) is not None:
        return kind
    message = failure.message.lower()
    for phrase, kind in _FATAL_PHRASES:
        if phrase in message:
            return kind
    status = failure.http_status
    if status is not None:
        if status == 429:
            return ErrorKind.RATE_LIMITED
        if status >= 500 or status == 408:
            return ErrorKind.TRANSIENT
        if status in (401, 403):
            return ErrorKind.AUTH
        if status >= 400:
            return ErrorKind.INVALID_REQUEST
    # A transport failure, or an answer without status (a FAILED provider task with an
    # unknown code): the provider's trouble, so worth another try.
    return ErrorKind.TRANSIENT


def retry_delay_s(kind: ErrorKind, retry: int) -> int:
    """Seconds to wait before retry number ``retry`` (0-based) of a retryable failure."""
    base = RATE_LIMIT_DELAY_BASE_S if kind is ErrorKind.RATE_LIMITED else RETRY_DELAY_BASE_S
    return int(base * 2 ** min(retry, TIER_COUNT - 1))


@dataclass(frozen=True)
class RetryLater:
    """Try again after ``delay_s``, through tier ``tier`` (0, 1 or 2) of ``kind``."""

    kind: ErrorKind
    retry: int
    """Which retry this is, 1-based (the seed's "retry r/3")."""
    tier: int
    delay_s: int

    @property
    def reason(self) -> str:
        """The contract's ``retry.reason``."""
        return "rate_limited" if self.kind is ErrorKind.RATE_LIMITED else "transient"


@dataclass(frozen=True)
class FailNow:
    """Give up: the failure is not retryable, or the retries are spent."""

    kind: ErrorKind
    exhausted: bool


def decide(
    failure: ProviderFailure, retries_done: int, max_retries: int = 3
) -> RetryLater | FailNow:
    """Retry or fail, given how many retries this image has already had."""
    kind = classify(failure)
    if not kind.retryable:
        return FailNow(kind, exhausted=False)
    if retries_done >= max_retries:
        return FailNow(kind, exhausted=True)
    tier = min(retries_done, TIER_COUNT - 1)
    wanted = failure.retry_after_s
    while wanted is not None and tier < TIER_COUNT - 1 and retry_delay_s(kind, tier) < wanted:
        tier += 1
    return RetryLater(kind, retry=retries_done + 1, tier=tier, delay_s=retry_delay_s(kind, tier))
