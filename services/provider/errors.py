"""Provider errors: each carries what the retry policy needs, as a ``ProviderFailure``."""

from __future__ import annotations

from services.errors import ImagegenError
from statemachine import ProviderFailure, Transport


class ProviderError(ImagegenError):
    """The provider call failed."""

    ambiguous = False
    """True when the request may have taken effect (a submit that may have been billed)."""

    @property
    def failure(self) -> ProviderFailure:
        return ProviderFailure(message=str(self))


class ProviderHTTPError(ProviderError):
    """The provider answered with an error status."""

    def __init__(
        self,
        status: int,
        code: str | None,
        message: str,
        request_id: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.request_id = request_id
        self.retry_after_s = retry_after_s
        head = " ".join(str(p) for p in (status, code) if p is not None)
        super().__init__(f"provider error: {head} - {message}")

    @property
    def failure(self) -> ProviderFailure:
        return ProviderFailure(
            self.status, self.code, self.message, retry_after_s=self.retry_after_s
        )


class ProviderTransportError(ProviderError):
    """No usable answer came back."""

    transport = Transport.PROTOCOL

    def __init__(self, message: str, *, ambiguous: bool) -> None:
        self.message = message
        self.ambiguous = ambiguous
        super().__init__(f"provider error: {self.transport.value} - {message}")

    @property
    def failure(self) -> ProviderFailure:
        return ProviderFailure(message=self.message, transport=self.transport)


class ProviderConnectError(ProviderTransportError):
    """The provider could not be reached; nothing was sent."""

    transport = Transport.CONNECT

    def __init__(self, message: str) -> None:
        super().__init__(message, ambiguous=False)


class ProviderTimeout(ProviderTransportError):
    """No answer in time; the request may have reached the provider."""

    transport = Transport.TIMEOUT


class ProviderTaskFailed(ProviderError):
    """The provider task ended without an image (FAILED, or a failed entry of a result)."""

    def __init__(self, code: str | None, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"provider error: {code or 'FAILED'} - {message}")

    @property
    def failure(self) -> ProviderFailure:
        return ProviderFailure(None, self.code, self.message)


class ProviderTaskLost(ProviderError):
    """The provider no longer knows the task (UNKNOWN, or cancelled there): submit again."""

    @property
    def failure(self) -> ProviderFailure:
        return ProviderFailure(message=str(self), transport=Transport.PROTOCOL)


class ProviderPollTimeout(ProviderError):
    """The provider task did not finish within the poll budget; it may still finish."""

    @property
    def failure(self) -> ProviderFailure:
        return ProviderFailure(message=str(self), transport=Transport.TIMEOUT)
