"""check-config (and EventListenerConfig.from_file): unknown keys get a suggestion, an [mqtt] table holds the
options, and with --with-env an invalid MQTT_* variable is blamed on the variable, not on the file."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from Listener import ConfigError, EventListenerConfig
from Listener.cli.command import EXIT_FAILURE, EXIT_OK, main
from Listener.config.settings import describe_unknown_keys, environment_variables


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, root_logger: logging.Logger) -> None:
    for name in list(os.environ):
        if name.startswith("MQTT_"):
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "listener.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_an_unknown_key_in_a_file_gets_the_same_suggestion_as_set(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "prot = 1884\n")
    assert main(["check-config", path]) == EXIT_FAILURE
    err = capsys.readouterr().err
    assert "'prot' (did you mean 'port'?)" in err and path in err


def test_describe_unknown_keys_without_a_close_match() -> None:
    assert describe_unknown_keys(["hots", "zzzzzz"]) == "'hots' (did you mean 'host'?), 'zzzzzz'"


def test_an_mqtt_table_holds_the_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, 'topic = "jobs"\n[mqtt]\nhost = "broker.local"\nport = 1884\n')
    config = EventListenerConfig.from_file(path)
    assert (config.host, config.port, config.topic) == ("broker.local", 1884, "jobs")
    assert main(["check-config", path]) == EXIT_OK
    assert 'host = "broker.local"' in capsys.readouterr().out


def test_an_unknown_key_inside_the_mqtt_table_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'prot' \(did you mean 'port'\?\)"):
        EventListenerConfig.from_file(write(tmp_path, "[mqtt]\nprot = 1884\n"))


def test_an_option_both_at_the_top_and_in_the_mqtt_table_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"both at the top level and in the \[mqtt\] table .*: port"):
        EventListenerConfig.from_file(write(tmp_path, "port = 1\n[mqtt]\nport = 2\n"))


def test_with_env_an_unparsable_variable_is_blamed_on_the_variable(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "port = 1884\n")
    monkeypatch.setenv("MQTT_PORT", "eighteen")
    assert main(["check-config", path, "--with-env"]) == EXIT_FAILURE
    err = capsys.readouterr().err.strip()
    assert err == "mqtt-listener: environment: Invalid MQTT_PORT: 'eighteen' (expected an integer for port)"


def test_with_env_an_out_of_range_variable_is_blamed_on_the_variable(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "port = 1884\n")
    monkeypatch.setenv("MQTT_PORT", "70000")
    assert main(["check-config", path, "--with-env"]) == EXIT_FAILURE
    err = capsys.readouterr().err
    assert "Invalid port" in err and "70000" in err and err.rstrip().endswith("(from environment variable MQTT_PORT)")
    assert path not in err


def test_with_env_a_bad_value_in_the_file_is_still_blamed_on_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "port = 70000\n")
    monkeypatch.setenv("MQTT_HOST", "broker.local")
    assert main(["check-config", path, "--with-env"]) == EXIT_FAILURE
    err = capsys.readouterr().err
    assert err.startswith(f"mqtt-listener: {path}: Invalid port") and "MQTT_" not in err


def test_environment_variables_maps_options_to_the_variables_set() -> None:
    found = environment_variables(environ={"MQTT_PORT": "1", "MQTT_CA_FILE": "/ca.pem", "OTHER": "x"})
    assert found == {"port": "MQTT_PORT", "cafile": "MQTT_CA_FILE"}


def test_help_is_self_contained(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "docs/" not in out and ".md" not in out
    for needed in ("MQTT_HOST", "--set KEY=VALUE", "[mqtt] table", "check-config", "exit codes"):
        assert needed in out


# -- credentials --------------------------------------------------------------------------------------

SECRET = "pw-check-config-9f3"


def test_an_empty_username_in_a_file_is_valid_and_means_no_credentials(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, 'username = ""\n')
    assert main(["check-config", path]) == EXIT_OK
    assert "configuration is valid" in capsys.readouterr().err


def test_check_config_refuses_a_password_without_a_username_without_showing_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, f'username = ""\npassword = "{SECRET}"\n')
    assert main(["check-config", path]) == EXIT_FAILURE
    captured = capsys.readouterr()
    assert f"{path}: Invalid password: *** (a password without a username" in captured.err
    assert SECRET not in captured.err + captured.out


def test_with_env_a_password_without_a_username_is_blamed_on_mqtt_password(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, 'username = ""\n')
    monkeypatch.setenv("MQTT_PASSWORD", SECRET)
    assert main(["check-config", path, "--with-env"]) == EXIT_FAILURE
    err = capsys.readouterr().err
    assert err.startswith("mqtt-listener: Invalid password: *** (a password without a username")
    assert err.rstrip().endswith("(from environment variable MQTT_PASSWORD)") and SECRET not in err
