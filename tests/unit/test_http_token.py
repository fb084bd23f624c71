"""The dashboard's token: where it may come from, how it is checked, and that it is never shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from Listener import EventListenerConfig
from Listener.cli.command import parse_overrides
from Listener.cli.exit_codes import CliError
from Listener.config.settings import http_token
from Listener.errors import ConfigError
from Listener.mqtt.client import secrets

TOKEN = "s3cret-dashboard-token-42"


def test_the_token_comes_from_the_environment_and_is_never_shown() -> None:
    config = EventListenerConfig.from_env(environ={"MQTT_HTTP_TOKEN": TOKEN})
    assert http_token(config) == TOKEN
    assert TOKEN not in repr(config) and TOKEN not in str(config.redacted_dict())
    assert TOKEN in secrets(config)  # masked in logs and events wherever it appears


def test_the_token_comes_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(f"{TOKEN}\nsecond line ignored\n", encoding="utf-8")
    config = EventListenerConfig(http_token_file=str(path))
    assert http_token(config) == TOKEN and TOKEN in secrets(config)
    assert http_token(EventListenerConfig()) is None


def test_an_unreadable_or_short_token_file_is_a_clear_error(tmp_path: Path) -> None:
    missing = EventListenerConfig(http_token_file=str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match=r"Invalid http_token_file: .*nope.* \(cannot be read"):
        http_token(missing)
    short = tmp_path / "short"
    short.write_text("abc\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="at least 16 characters") as caught:
        http_token(EventListenerConfig(http_token_file=str(short)))
    assert "abc" not in str(caught.value).replace(str(short), "")


def test_a_short_token_or_both_settings_are_refused_without_showing_the_token(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"Invalid http_token: \*\*\* \(must be a string of at least 16") as caught:
        EventListenerConfig(http_token="short-secret")
    assert "short-secret" not in str(caught.value)
    with pytest.raises(ConfigError, match="not both"):
        EventListenerConfig(http_token=TOKEN, http_token_file=str(tmp_path / "t"))


def test_the_command_line_refuses_the_token() -> None:
    with pytest.raises(CliError, match="not accepted on the command line") as caught:
        parse_overrides([f"http_token={TOKEN}"])
    assert TOKEN not in str(caught.value)
    assert parse_overrides(["http_token_file=/run/secrets/token"]) == {"http_token_file": "/run/secrets/token"}
