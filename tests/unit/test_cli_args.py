"""Unit tests for Listener.cli.command without a broker: arguments, --set parsing, precedence, check-config, refusals."""

from __future__ import annotations

import json
import os
import runpy
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict

import pytest
import tomli

from Listener import __version__
from Listener.cli.command import (EXIT_FAILURE, EXIT_OK, EXIT_USAGE, CliError, build_parser, load_config, load_processor, main,
                                  parse_overrides, parse_set_value, render_settings)


pytestmark = pytest.mark.usefixtures("root_logger")  # main() installs a root log handler


ROOT = Path(__file__).resolve().parents[2]
SECRET = "pw-Zq81-never-shown"


def write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


@pytest.fixture(autouse=True)
def no_mqtt_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """MQTT_* variables of the machine running the tests must not leak into these expectations."""
    for name in list(os.environ):
        if name.startswith("MQTT_"):
            monkeypatch.delenv(name)


# -- the parser ---------------------------------------------------------------------------------------


def test_run_arguments() -> None:
    args = build_parser().parse_args(["run", "app.jobs:process", "--config", "l.toml", "--set", "port=1884", "-s",
                                      "topic=jobs", "--embedded-broker", "--log-format", "json", "--log-level", "debug"])
    assert args.command == "run"
    assert args.processor == "app.jobs:process"
    assert args.config == "l.toml"
    assert args.overrides == ["port=1884", "topic=jobs"]
    assert args.embedded_broker is True
    assert args.log_format == "json"
    assert args.log_level == "DEBUG"


def test_run_defaults() -> None:
    args = build_parser().parse_args(["run", "m:f"])
    assert (args.config, args.overrides, args.unset, args.embedded_broker, args.log_format, args.log_level) == \
        (None, [], [], False, "text", "INFO")


def test_publish_needs_a_topic_and_exactly_one_payload_source(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["publish", "--data", "a = 1"]) == EXIT_USAGE
    assert main(["publish", "--topic", "t"]) == EXIT_USAGE
    assert main(["publish", "--topic", "t", "--data", "a = 1", "--file", "x.toml"]) == EXIT_USAGE
    assert main(["publish", "--topic", "t", "--data", "a = 1", "--qos", "3"]) == EXIT_USAGE
    assert "usage:" in capsys.readouterr().err


def test_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == EXIT_OK
    assert capsys.readouterr().out.strip() == f"mqtt-listener {__version__}"
    assert main(["--help"]) == EXIT_OK
    out = capsys.readouterr().out
    for command in ("run", "check-config", "publish"):
        assert command in out


def test_a_command_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == EXIT_USAGE
    assert "required" in capsys.readouterr().err


# -- --set and --unset ------------------------------------------------------------------------------


@pytest.mark.parametrize("name, raw, expected", [
    ("port", "1884", 1884),
    ("auto_reconnect", "false", False),
    ("connect_timeout", "2.5", 2.5),
    ("reconnect_retries", "-1", -1),
    ("custom_topics", '{ "jobs/urgent" = { qos = 2 } }', {"jobs/urgent": {"qos": 2}}),
    ("will", '{topic = "status", message = "offline"}', {"topic": "status", "message": "offline"}),
    ("topic", "jobs/in/#", "jobs/in/#"),          # not TOML: the raw text
    ("host", '"broker.local"', "broker.local"),   # a quoted TOML string is unquoted
    ("client_id", "123", "123"),                  # text options keep numbers as typed
    ("password", "true", "true"),
    ("username", "007", "007"),
    ("log_topic", "", ""),
    ("duplicate_action", "error", "error"),
])
def test_set_values_are_toml_or_text(name: str, raw: str, expected: Any) -> None:
    assert parse_set_value(name, raw) == expected


def test_overrides_accept_dashes_and_unset() -> None:
    values = parse_overrides(["shutdown-grace-period=5", "port = 1884"], ["username", "password"])
    assert values == {"shutdown_grace_period": 5, "port": 1884, "username": None, "password": None}


def test_set_username_to_nothing_means_no_credentials() -> None:
    from Listener.mqtt.client import credentials

    values = parse_overrides(["username="])
    assert values == {"username": ""}
    assert credentials(load_config(None, values, environ={}))[1:] == (None, None)
    assert credentials(load_config(None, parse_overrides([], ["username"]), environ={}))[1:] == (None, None)


def test_set_a_password_without_a_username_is_a_usage_error_that_hides_it() -> None:
    with pytest.raises(CliError) as info:
        load_config(None, parse_overrides(["username=", "password=pw-cli-77"]), environ={})
    assert info.value.code == EXIT_USAGE
    assert "Invalid password: ***" in str(info.value) and "pw-cli-77" not in str(info.value)


def test_unknown_keys_are_named_with_a_suggestion() -> None:
    with pytest.raises(CliError) as info:
        parse_overrides(["prot=1", "hots=a", "port=2"])
    assert info.value.code == EXIT_USAGE
    message = str(info.value)
    assert "'prot' (did you mean 'port'?)" in message
    assert "'hots' (did you mean 'host'?)" in message


def test_a_set_without_equals_is_refused_and_does_not_echo_secrets() -> None:
    with pytest.raises(CliError, match="KEY=VALUE"):
        parse_overrides(["port"])
    with pytest.raises(CliError) as info:
        parse_overrides(["unknownkey"])
    assert "KEY=VALUE" in str(info.value)


def test_unset_of_a_required_option_is_refused() -> None:
    with pytest.raises(CliError, match="cannot be None"):
        parse_overrides([], ["port"])
    with pytest.raises(CliError, match="unknown"):
        parse_overrides([], ["nope"])


def test_main_reports_unknown_keys_with_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "m:f", "--set", "prot=1"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("mqtt-listener: unknown configuration key(s): 'prot'")


# -- precedence ---------------------------------------------------------------------------------------


def test_set_beats_environment_beats_file_beats_default(tmp_path: Path) -> None:
    config_file = write(tmp_path / "l.toml", 'host = "from-file"\nport = 1111\ntopic = "file/topic"\nqos = 1\n')
    environ = {"MQTT_PORT": "2222", "MQTT_TOPIC": "env/topic"}
    config = load_config(config_file, parse_overrides(["topic=cli/topic"]), environ=environ)
    assert config.topic == "cli/topic"          # --set
    assert config.port == 2222                  # environment over file
    assert config.host == "from-file"           # file over default
    assert config.qos == 1
    assert config.results_topic == "test/results"  # default


def test_an_invalid_setting_is_a_usage_error_naming_field_and_value() -> None:
    with pytest.raises(CliError) as info:
        load_config(None, {"port": 70000}, environ={})
    assert info.value.code == EXIT_USAGE
    assert "70000" in str(info.value) and "port" in str(info.value)


def test_run_with_an_invalid_setting_exits_2_without_showing_the_password(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "m:f", "--set", f"password={SECRET}", "--set", "qos=7"]) == EXIT_USAGE
    captured = capsys.readouterr()
    assert "Invalid QoS value: 7" in captured.err
    assert SECRET not in captured.err + captured.out


# -- processors ---------------------------------------------------------------------------------------


@pytest.fixture
def processor_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    write(tmp_path / "cli_unit_processors.py",
          "def process(data, job_id):\n    return {'job_id': job_id}\n\n"
          "class Worker:\n    @staticmethod\n    def handle(data, job_id):\n        return None\n\n"
          "NOT_CALLABLE = 42\n")
    write(tmp_path / "cli_unit_broken.py", "import not_a_real_dependency_xyz\n")
    write(tmp_path / "cli_unit_raises.py", "raise RuntimeError('import-time failure')\n")
    write(tmp_path / "cli_unit_attribute.py", "import os\nos.no_such_function_xyz()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "cli_unit_processors"


def test_load_processor_finds_functions_and_nested_attributes(processor_module: str) -> None:
    assert load_processor(f"{processor_module}:process")({}, "j-1") == {"job_id": "j-1"}
    assert load_processor(f"{processor_module}:Worker.handle")({}, "j-1") is None


@pytest.mark.parametrize("spec, expected", [
    ("cli_unit_processors", "must look like package.module:function"),
    (":process", "must look like"),
    ("cli_unit_processors:", "must look like"),
    ("no_such_module_xyz:process", "cannot import processor module 'no_such_module_xyz': no module named"),
    ("no_such_package_xyz.sub:process", "no module named 'no_such_package_xyz'"),
    ("cli_unit_processors:missing", "has no attribute 'missing'"),
    ("cli_unit_processors:Worker.missing", "has no attribute 'Worker.missing'"),
    ("cli_unit_processors:NOT_CALLABLE", "is not callable"),
    ("cli_unit_broken:process", "ModuleNotFoundError: No module named 'not_a_real_dependency_xyz'"),
    ("cli_unit_raises:process", "RuntimeError: import-time failure"),
    # An AttributeError raised by the module's own code is an import failure, not a missing processor.
    ("cli_unit_attribute:process", "importing processor module 'cli_unit_attribute' failed: AttributeError"),
    ("cli_unit_processors:not-a-name", "must look like"),
])
def test_load_processor_errors_are_clear(processor_module: str, spec: str, expected: str) -> None:
    with pytest.raises(CliError) as info:
        load_processor(spec)
    assert info.value.code == EXIT_USAGE
    assert expected in str(info.value)


def test_run_with_an_unimportable_processor_exits_2_before_connecting(capsys: pytest.CaptureFixture[str]) -> None:
    # Port 1 on loopback: if it tried to connect it would fail with exit 1, not 2.
    assert main(["run", "no_such_module_xyz:process", "--set", "port=1"]) == EXIT_USAGE
    assert "cannot import processor module" in capsys.readouterr().err


def test_run_exits_1_when_the_http_port_is_taken(processor_module: str, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = main(["run", f"{processor_module}:process", "--set", f"http_port={port}", "--set", "port=1",
                     "--set", f"password={SECRET}"])
    assert code == EXIT_FAILURE
    err = capsys.readouterr().err
    assert "mqtt-listener: cannot start:" in err and "address already in use" in err
    assert SECRET not in err


def test_embedded_broker_refuses_non_loopback_and_tls(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "m:f", "--embedded-broker", "--set", "host=10.1.2.3"]) == EXIT_USAGE
    assert "loopback" in capsys.readouterr().err
    assert main(["run", "m:f", "--embedded-broker", "--set", "uri=mqtts://127.0.0.1:8883"]) == EXIT_USAGE
    assert "plain mqtt://" in capsys.readouterr().err


# -- check-config -----------------------------------------------------------------------------------


GOOD = f'''host = "broker.local"
port = 8883
password = "{SECRET}"
uri = "mqtts://bob:{SECRET}@broker.local:8883"
topic = "jobs/#"
custom_topics = {{ "jobs/urgent" = {{ qos = 2, retain = true }} }}
will = {{ topic = "status", message = "offline" }}
cadata = "-----BEGIN CERTIFICATE-----\\nMIIB\\n-----END CERTIFICATE-----"
'''


def test_check_config_prints_the_effective_settings_as_toml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "listener.toml", GOOD)
    assert main(["check-config", path]) == EXIT_OK
    captured = capsys.readouterr()
    assert SECRET not in captured.out + captured.err
    assert "configuration is valid" in captured.err
    assert 'password = "***"' in captured.out
    assert "# connect_timeout is not set" in captured.out
    settings = tomli.loads(captured.out)  # the output is TOML itself
    assert settings["host"] == "broker.local"
    assert settings["port"] == 8883
    assert settings["uri"] == "mqtts://bob:***@broker.local:8883"
    assert settings["custom_topics"] == {"jobs/urgent": {"qos": 2, "retain": True}}
    assert settings["cadata"] == "<certificate data>"
    assert settings["max_jobs_in_memory"] == 5000


def test_check_config_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "listener.toml", GOOD)
    assert main(["check-config", path, "--format", "json"]) == EXIT_OK
    out = capsys.readouterr().out
    assert SECRET not in out
    settings = json.loads(out)
    assert settings["password"] == "***"
    assert settings["connect_timeout"] is None
    assert settings["will"] == {"topic": "status", "message": "offline"}


def test_check_config_reads_json_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "listener.json", json.dumps({"port": 1884, "topic": "j"}))
    assert main(["check-config", path, "--format", "json"]) == EXIT_OK
    assert json.loads(capsys.readouterr().out)["port"] == 1884


def test_check_config_with_env(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                               monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path / "listener.toml", "port = 1111\n")
    monkeypatch.setenv("MQTT_PORT", "2222")
    assert main(["check-config", path, "--format", "json"]) == EXIT_OK
    assert json.loads(capsys.readouterr().out)["port"] == 1111
    assert main(["check-config", path, "--format", "json", "--with-env"]) == EXIT_OK
    assert json.loads(capsys.readouterr().out)["port"] == 2222


@pytest.mark.parametrize("content, expected", [
    ("port = 70000\n", "Invalid port number: 70000 (must be an integer from 1 to 65535)"),
    ('duplicate_action = "ignore"\n', "Invalid duplicate_action: 'ignore' (must be one of skip, reprocess, error)"),
    ("qos = 3\n", "Invalid QoS value: 3 for qos"),
    ('topic = "a/#/b"\n', "Invalid topic: 'a/#/b'"),
    ("prot = 1\n", "Unknown option(s)"),
    ("port = \n", "Invalid TOML syntax"),
    (f'password = 5\nusername = "{SECRET}"\n', "Invalid password: *** (must be a string or None, got int)"),
])
def test_check_config_reports_field_value_and_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     content: str, expected: str) -> None:
    path = write(tmp_path / "bad.toml", content)
    assert main(["check-config", path]) == EXIT_FAILURE
    captured = capsys.readouterr()
    assert captured.out == ""
    assert expected in captured.err
    assert "bad.toml" in captured.err
    assert SECRET not in captured.err


def test_check_config_of_a_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(tmp_path / "nope.toml")]) == EXIT_FAILURE
    assert "does not exist" in capsys.readouterr().err


def test_render_settings_quotes_keys_and_special_floats() -> None:
    text = render_settings({"a": float("inf"), "b": {"x/y": [1, "two"]}, "c": b"raw", "d": None})
    assert tomli.loads(text) == {"a": float("inf"), "b": {"x/y": [1, "two"]}, "c": "raw"}


# -- publish refusals (no broker needed: they happen before connecting) --------------------------------


def test_publish_refuses_invalid_toml(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["publish", "--topic", "jobs", "--data", "this is not toml ]]", "--port", "1"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "not valid TOML, nothing was sent" in err
    assert "Invalid TOML syntax" in err


def test_publish_refuses_wildcard_topics(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["publish", "--topic", "jobs/#", "--data", 'job_id = "1"', "--port", "1"]) == EXIT_USAGE
    assert "invalid topic 'jobs/#'" in capsys.readouterr().err


def test_publish_refuses_unreadable_oversized_and_non_utf8_files(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["publish", "-t", "j", "--file", str(tmp_path / "missing.toml"), "--port", "1"]) == EXIT_USAGE
    assert "cannot read" in capsys.readouterr().err
    big = tmp_path / "big.toml"
    big.write_bytes(b'pad = "' + b"x" * 2000 + b'"\n')
    assert main(["publish", "-t", "j", "-f", str(big), "--set", "max_payload_bytes=1000", "--port", "1"]) == EXIT_USAGE
    assert "larger than max_payload_bytes (1000 bytes)" in capsys.readouterr().err
    latin = tmp_path / "latin.toml"
    latin.write_bytes(b'name = "caf\xe9"\n')
    assert main(["publish", "-t", "j", "-f", str(latin), "--port", "1"]) == EXIT_USAGE
    assert "not valid UTF-8" in capsys.readouterr().err


def test_publish_to_an_unreachable_broker_exits_1_without_the_password(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["publish", "-t", "jobs", "-d", 'job_id = "1"', "--host", "127.0.0.1", "--port", "1",
                 "--password", SECRET, "--timeout", "3"])
    assert code == EXIT_FAILURE
    captured = capsys.readouterr()
    assert "Cannot connect to MQTT broker at 127.0.0.1:1" in captured.err
    assert SECRET not in captured.err + captured.out


def test_publish_warns_about_a_missing_job_id(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["publish", "-t", "jobs", "-d", 'value = 1', "--port", "1", "--timeout", "2"]) == EXIT_FAILURE
    assert "has no 'job_id'" in capsys.readouterr().err
    assert main(["publish", "-t", "jobs", "-d", 'job_id = ""', "--port", "1", "--timeout", "2"]) == EXIT_FAILURE
    assert "has an empty 'job_id'" in capsys.readouterr().err


def test_publish_rejects_a_bad_timeout(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["publish", "-t", "jobs", "-d", 'job_id = "1"', "--timeout", "0"]) == EXIT_USAGE
    assert "--timeout" in capsys.readouterr().err


# -- the real entry points ----------------------------------------------------------------------------


def run_module(*args: str, env: Dict[str, str] | None = None) -> "subprocess.CompletedProcess[str]":
    return subprocess.run([sys.executable, "-m", "Listener", *args], capture_output=True, text=True,  # noqa: S603
                          timeout=60, cwd=str(ROOT), env=env)


def test_the_main_module_runs_main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "argv", ["mqtt-listener", "--version"])
    # The `listener` plugin's entry point makes pytest take this package for assertion rewriting, and
    # that importer has no get_code() for runpy; the subprocess test below covers the real thing.
    monkeypatch.setattr(sys, "meta_path", [f for f in sys.meta_path if type(f).__name__ != "AssertionRewritingHook"])
    with pytest.raises(SystemExit) as info:
        runpy.run_module("Listener", run_name="__main__")
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"mqtt-listener {__version__}"


def test_python_dash_m_listener_works() -> None:
    result = run_module("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"mqtt-listener {__version__}"


def test_check_config_through_a_subprocess(tmp_path: Path) -> None:
    good = write(tmp_path / "good.toml", GOOD)
    bad = write(tmp_path / "bad.toml", "port = 0\n")
    result = run_module("check-config", good)
    assert result.returncode == 0, result.stderr
    assert SECRET not in result.stdout + result.stderr
    result = run_module("check-config", bad)
    assert result.returncode == 1
    assert "Invalid port number: 0" in result.stderr
    assert "Traceback" not in result.stderr


def test_output_into_a_closed_pipe_is_not_a_traceback(tmp_path: Path) -> None:
    good = write(tmp_path / "good.toml", GOOD)
    code = (f"import subprocess, sys; p = subprocess.Popen([sys.executable, '-m', 'Listener', 'check-config', "
            f"{good!r}, '--format', 'json'], stdout=subprocess.PIPE, stderr=subprocess.PIPE); "
            "p.stdout.close(); err = p.stderr.read(); p.wait(30); sys.stdout.write(err.decode())")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,  # noqa: S603
                            cwd=str(ROOT))
    assert "Traceback" not in result.stdout
    assert "BrokenPipeError" not in result.stdout
