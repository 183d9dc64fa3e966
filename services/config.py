"""Typed settings, read once from the environment (CONTRACT.md §5 plus operational knobs)."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from yarl import URL

from services.errors import ConfigError, validation_message

_NAMESPACE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
# The password of a URL (scheme://user:password@host), kept out of error messages.
_PASSWORD = re.compile(r"(://[^:/@]*:)[^@/]*@")
_UNSET = {
    "dashscope_api_key": "to use the built-in simulator",
    "admin_token": "to leave /api open",
}


class Settings(BaseSettings):
    """Every setting the service reads. Build it once in ``main()`` and pass it along."""

    model_config = SettingsConfigDict(
        env_prefix="IMAGEGEN_", extra="ignore", frozen=True, populate_by_name=True
    )

    database_url: str = "postgresql+asyncpg://postgres@127.0.0.1:5432/imagegen"
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    namespace: str = Field(default="imagegen", pattern=_NAMESPACE_PATTERN)
    max_concurrent: int = Field(default=3, ge=1, le=1000)
    """Provider calls in flight across every worker process together."""
    max_retries: int = Field(default=3, ge=0, le=20)
    admin_token: SecretStr | None = None
    http_port: int = Field(default=8000, ge=1, le=65535)

    dashscope_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("DASHSCOPE_API_KEY")
    )
    dashscope_base_url: str = Field(
        default="https://dashscope.aliyuncs.com/api/v1",
        validation_alias=AliasChoices("DASHSCOPE_BASE_URL"),
    )
    dashscope_model: str = Field(
        default="wanx2.1-t2i-turbo", validation_alias=AliasChoices("DASHSCOPE_MODEL")
    )

    # Operational knobs beyond the contract.
    image_size: str = Field(default="1024*1024", pattern=r"^\d{2,5}\*\d{2,5}$")
    retry_ttl_scale: float = Field(default=1.0, gt=0, le=1.0)
    """Shrinks every retry-tier TTL (tests and benchmarks only; production keeps 1.0)."""
    provider_connect_timeout_s: float = Field(default=5.0, gt=0)
    provider_read_timeout_s: float = Field(default=30.0, gt=0)
    provider_poll_timeout_s: float = Field(default=600.0, gt=0)
    """Longest wait for one provider task to finish before it counts as a transient failure."""
    poll_schedule_scale: float = Field(default=1.0, gt=0, le=1.0)
    provider_submit_rate_per_s: float = Field(default=2.0, ge=0)
    """Submits per second across every worker (DashScope: 2/s per account for wanx2.1 and
    wan2.2 models, 5/s for wan2.5); 0 lifts it and leaves pacing to the 429 tiers."""
    provider_query_rate_per_s: float = Field(default=20.0, ge=0)
    """Task queries per second per process (DashScope allows 20 per account); 0 lifts it."""
    worker_prefetch: int = Field(default=0, ge=0, le=1000)
    """Unacked image messages per worker process; 0 means twice max_concurrent."""
    db_pool_size: int = Field(default=10, ge=1, le=200)
    """Pooled PostgreSQL connections per process, opened at start (a worker's lock keeper
    takes one more)."""
    reconcile_interval_s: float = Field(default=60.0, gt=0)
    reconcile_stale_after_s: float = Field(default=600.0, gt=0)
    """An unfinished image untouched this long, with no worker on it, is dispatched again."""
    outbox_poll_interval_s: float = Field(default=1.0, gt=0)
    shutdown_grace_s: float = Field(default=30.0, gt=0)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["console", "json"] = "console"

    @field_validator("database_url")
    @classmethod
    def _asyncpg_only(cls, value: str) -> str:
        if not value.startswith("postgresql+asyncpg://"):
            raise ValueError("must start with postgresql+asyncpg://")
        try:
            url = make_url(value)
        except ValueError as exc:  # a port that is not a number
            raise ValueError(f"is not a database URL ({exc})") from None
        if not url.database:
            # asyncpg would connect to the user's own database, "postgres" most often, and
            # the migrations would fill that one.
            raise ValueError("must name the database, as in …/imagegen")
        if url.port is not None and not 1 <= url.port <= 65535:
            raise ValueError(f"has port {url.port}, outside 1..65535")
        return value

    @field_validator("namespace")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if f"{value}.".startswith("amq."):
            # The broker refuses every exchange named amq.*, which "amq.tasks" would be.
            raise ValueError("must not be amq or start with amq. (RabbitMQ reserves amq.*)")
        return value

    @field_validator("amqp_url")
    @classmethod
    def _amqp_scheme(cls, value: str) -> str:
        if not value.startswith(("amqp://", "amqps://")):
            raise ValueError("must start with amqp:// or amqps://")
        try:
            host = URL(value).host
        except ValueError as exc:  # a port that is not a number, or out of range
            raise ValueError(f"is not a broker URL ({exc})") from None
        if not host:
            raise ValueError("must name the broker's host, as in amqp://guest:guest@host:5672/")
        return value

    @field_validator("dashscope_api_key", "admin_token", mode="before")
    @classmethod
    def _secret_given(cls, value: Any, info: ValidationInfo) -> Any:
        # A secret read from a file often ends in a newline, which no HTTP header may hold;
        # an empty provider key fails every task on InvalidApiKey, and an empty admin token
        # would lock /api for good.
        if isinstance(value, str):
            value = value.strip()
            if not value:
                raise ValueError(f"is empty: set it, or unset it {_UNSET[str(info.field_name)]}")
        return value

    @field_validator("dashscope_base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        scheme, _, rest = value.partition("://")
        if scheme not in ("http", "https") or not rest.strip("/"):
            raise ValueError("must be an http:// or https:// URL with a host")
        return value

    @property
    def uses_simulator(self) -> bool:
        return self.dashscope_api_key is None

    @property
    def prefetch(self) -> int:
        return self.worker_prefetch or 2 * self.max_concurrent


def _variable_name(field: str) -> str:
    """The variable behind an error's location: a field's name, or its alias as read."""
    info = Settings.model_fields.get(field)
    if info is None:
        return field
    alias = info.validation_alias
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    return f"IMAGEGEN_{field.upper()}"


def load_settings(**overrides: Any) -> Settings:
    """Read the settings; a bad value raises ``ConfigError`` naming the variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = str(error["loc"][0]) if error["loc"] else "?"
            shown = _PASSWORD.sub(r"\1***@", str(error.get("input")))
            problems.append(f"{_variable_name(field)}={shown!r}: {validation_message(error)}")
        raise ConfigError("invalid settings: " + "; ".join(problems)) from None
