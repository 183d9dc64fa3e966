"""Settings come from the environment under the contract's names; bad values name the variable."""

from __future__ import annotations

import pytest

from services.config import load_settings
from services.errors import ConfigError


def test_defaults_match_the_contract(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "IMAGEGEN_DATABASE_URL",
        "IMAGEGEN_AMQP_URL",
        "IMAGEGEN_NAMESPACE",
        "IMAGEGEN_MAX_CONCURRENT",
        "IMAGEGEN_MAX_RETRIES",
        "DASHSCOPE_API_KEY",
        "DASHSCOPE_BASE_URL",
        "DASHSCOPE_MODEL",
        "IMAGEGEN_ADMIN_TOKEN",
        "IMAGEGEN_HTTP_PORT",
    ):
        monkeypatch.delenv(name, raising=False)
    s = load_settings()
    assert s.database_url == "postgresql+asyncpg://postgres@127.0.0.1:5432/imagegen"
    assert s.amqp_url == "amqp://guest:guest@127.0.0.1:5672/"
    assert (s.namespace, s.max_concurrent, s.max_retries, s.http_port) == ("imagegen", 3, 3, 8000)
    assert s.dashscope_base_url == "https://dashscope.aliyuncs.com/api/v1"
    assert s.dashscope_model == "wanx2.1-t2i-turbo"
    assert s.uses_simulator and s.admin_token is None


def test_the_environment_overrides_each_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGEGEN_MAX_CONCURRENT", "7")
    monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-secret")
    monkeypatch.setenv("IMAGEGEN_NAMESPACE", "blue")
    s = load_settings()
    assert (s.max_concurrent, s.namespace, s.uses_simulator) == (7, "blue", False)
    assert "sk-secret" not in repr(s) and "sk-secret" not in str(s)


def test_a_key_read_from_a_file_loses_its_trailing_newline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-secret\n")
    key = load_settings().dashscope_api_key
    assert key is not None and key.get_secret_value() == "sk-secret"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("IMAGEGEN_MAX_CONCURRENT", "abc"),
        ("IMAGEGEN_MAX_CONCURRENT", "0"),
        ("IMAGEGEN_MAX_RETRIES", "-1"),
        ("IMAGEGEN_HTTP_PORT", "70000"),
        ("IMAGEGEN_DATABASE_URL", "mysql://x"),
        ("IMAGEGEN_DATABASE_URL", "mysql://app:s3cret-pw@db/imagegen"),
        ("IMAGEGEN_DATABASE_URL", "postgresql+asyncpg://app:s3cret-pw@127.0.0.1:5432/"),
        ("IMAGEGEN_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:abc/imagegen"),
        ("IMAGEGEN_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:99999/imagegen"),
        ("IMAGEGEN_AMQP_URL", "http://x"),
        ("IMAGEGEN_AMQP_URL", "amqp:///"),
        ("IMAGEGEN_AMQP_URL", "amqp://app:s3cret-pw@127.0.0.1:abc/"),
        ("IMAGEGEN_AMQP_URL", "amqp://guest:guest@127.0.0.1:99999/"),
        ("IMAGEGEN_NAMESPACE", "bad name!"),
        ("IMAGEGEN_NAMESPACE", "amq"),
        ("IMAGEGEN_NAMESPACE", "amq.blue"),
        ("DASHSCOPE_API_KEY", ""),
        ("DASHSCOPE_API_KEY", " \n"),
        ("IMAGEGEN_ADMIN_TOKEN", ""),
        ("DASHSCOPE_BASE_URL", "dashscope.aliyuncs.com/api/v1"),
        ("DASHSCOPE_BASE_URL", "https://"),
    ],
)
def test_a_bad_value_fails_with_a_message_naming_the_variable_but_never_a_password(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert str(raised.value).startswith(f"invalid settings: {name}=")
    assert "Value error" not in str(raised.value)
    assert "s3cret-pw" not in str(raised.value)


def test_a_socket_directory_in_the_query_is_a_database_url_like_any_other(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = "postgresql+asyncpg://postgres@/imagegen?host=/var/run/postgresql"
    monkeypatch.setenv("IMAGEGEN_DATABASE_URL", url)
    assert load_settings().database_url == url
