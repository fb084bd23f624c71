"""Valid settings that still break the listener (issue 9, items 2 and 10): own topics under the
subscription, keep_alive beyond MQTT's limit, uri against host/port, certificate files that do not exist."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Iterator

import pytest

from Listener import EventListener, EventListenerConfig
from Listener.cli.command import EXIT_FAILURE, EXIT_OK, main
from Listener.config.checks import config_warnings, covered_own_topics, file_problems, own_topics, uri_conflict
from Listener.errors import ConfigError


@pytest.fixture(autouse=True)
def no_mqtt_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith("MQTT_"):
            monkeypatch.delenv(name)
    yield


def write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


# -- own topics -----------------------------------------------------------------------------------


def test_the_manual_5_1_2_layout_covers_error_and_log_topics() -> None:
    config = EventListenerConfig(topic="events/+", error_topic="events/errors", log_topic="events/logs",
                                 results_topic="events/results")
    assert covered_own_topics(config) == [("error_topic", "events/errors", "events/+"),
                                          ("log_topic", "events/logs", "events/+"),
                                          ("results_topic", "events/results", "events/+")]
    warnings = config_warnings(config)
    assert len(warnings) == 3 and all("own_messages_ignored" in w for w in warnings)


@pytest.mark.parametrize("overrides, covered", [
    ({}, []),  # the defaults: topic "test" and test/error, test/log, test/results
    ({"topic": "test/#"}, ["error_topic", "log_topic", "results_topic"]),
    ({"topic": "#"}, ["error_topic", "log_topic", "results_topic"]),
    ({"topic": "jobs", "custom_topics": {"test/+": {"qos": 1}}, "cleansession": False},
     ["error_topic", "log_topic", "results_topic"]),
    ({"topic": "test/#", "log_topic": ""}, ["error_topic", "results_topic"]),
    ({"topic": "$share/g/test/#"}, ["error_topic", "log_topic", "results_topic"]),
    ({"topic": "test/error/#"}, ["error_topic"]),  # "#" also matches its parent level
])
def test_covered_own_topics(overrides: dict, covered: list) -> None:
    config = EventListenerConfig(**overrides)
    assert [option for option, _, _ in covered_own_topics(config)] == covered
    assert len(config_warnings(config)) == len(covered)


def test_own_topics_skips_an_empty_log_topic() -> None:
    assert own_topics(EventListenerConfig(log_topic="", results_topic="test/error")) == ("test/error",)


# -- keep_alive -----------------------------------------------------------------------------------


def test_keep_alive_beyond_the_mqtt_limit_is_refused() -> None:
    assert EventListenerConfig(keep_alive=65535).keep_alive == 65535
    with pytest.raises(ConfigError) as info:
        EventListenerConfig(keep_alive=65536)
    assert "keep_alive" in str(info.value) and "65536" in str(info.value) and "65535" in str(info.value)


# -- uri against host/port ------------------------------------------------------------------------


@pytest.mark.parametrize("overrides, expected", [
    ({"uri": "mqtt://a:1883"}, None),  # host and port left at their defaults: the uri is the address
    ({"uri": "mqtt://a:1883", "host": "a"}, None),
    ({"uri": "mqtt://A:1883", "host": "a", "port": 1883}, None),
    ({"host": "b", "port": 1884}, None),  # no uri given: it is generated from host and port
    ({"uri": "mqtts://a", "host": "a", "port": 8883}, None),
    ({"uri": "mqtt://u:p@a:1884", "host": "a", "port": 1884}, None),
    ({"uri": "mqtt://a:1883", "host": "b"}, "host 'b'"),
    ({"uri": "mqtt://a:1883", "port": 1884}, "port 1884"),
    ({"uri": "mqtt://a", "host": "b", "port": 2000}, "host 'b' and port 2000"),
    ({"uri": "mqtt://[::1]:1883", "host": "::1"}, None),
    ({"uri": "ws://a/mqtt", "host": "a", "port": 80}, None),
    ({"uri": "wss://a/mqtt", "port": 8443}, "port 8443"),
])
def test_uri_conflict(overrides: dict, expected: str | None) -> None:
    warning = uri_conflict(EventListenerConfig(**overrides))
    if expected is None:
        assert warning is None
    else:
        assert warning is not None and expected in warning and "the uri wins" in warning


def test_uri_conflict_warning_never_shows_the_password() -> None:
    warning = uri_conflict(EventListenerConfig(uri="mqtt://u:Zq81pw@a:1883", host="b"))
    assert warning is not None and "Zq81pw" not in warning and "uri points at a:1883" in warning


# -- certificate files ----------------------------------------------------------------------------


def test_a_config_naming_missing_files_can_still_be_built() -> None:
    # Configs are often built before the certificates are mounted: construction does not look.
    config = EventListenerConfig(cafile="/no/such/ca.pem", capath="/no/such/dir", certfile="/no/c.pem",
                                 keyfile="/no/k.pem")
    problems = file_problems(config)
    assert [p.split(" ", 1)[0] for p in problems] == ["cafile", "capath", "certfile", "keyfile"]
    assert "'/no/such/ca.pem': no such file" in problems[0] and "'/no/such/dir': no such directory" in problems[1]


def test_file_problems_wrong_kind_and_fine(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    assert file_problems(EventListenerConfig(cafile=str(ca), capath=str(tmp_path))) == []
    problems = file_problems(EventListenerConfig(cafile=str(tmp_path), capath=str(ca)))
    assert problems == [f"cafile {str(tmp_path)!r}: is not a file", f"capath {str(ca)!r}: is not a directory"]


def test_check_config_names_a_missing_file_and_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "mounted-later" / "ca.pem"
    path = write(tmp_path / "listener.toml", f'host = "broker"\ncafile = "{missing}"\n')
    assert main(["check-config", path]) == EXIT_FAILURE
    captured = capsys.readouterr()
    assert f"cafile {str(missing)!r}: no such file" in captured.err
    assert "configuration is valid" not in captured.err and captured.out == ""


def test_check_config_warns_but_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "listener.toml", 'topic = "events/+"\nerror_topic = "events/errors"\n'
                                             'log_topic = "events/logs"\nuri = "mqtt://a:1883"\nhost = "b"\n')
    assert main(["check-config", path]) == EXIT_OK
    err = capsys.readouterr().err
    assert "warning: the subscription 'events/+' also receives error_topic 'events/errors'" in err
    assert "warning: the subscription 'events/+' also receives log_topic 'events/logs'" in err
    assert "warning: uri points at a:1883, which disagrees with host 'b': the uri wins" in err
    assert "configuration is valid" in err


def test_check_config_of_the_defaults_has_no_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "listener.toml", "")
    assert main(["check-config", path]) == EXIT_OK
    assert "warning" not in capsys.readouterr().err


async def test_run_names_the_missing_file_before_connecting() -> None:
    config = EventListenerConfig(host="127.0.0.1", port=1, keyfile="/no/such/key.pem", certfile="/no/such/cert.pem",
                                 reconnect_retries=5)
    listener = EventListener(config)
    with pytest.raises(ConnectionError) as info:
        await asyncio.wait_for(listener.run(lambda data, job_id: None), 5)
    message = str(info.value)
    assert "certfile '/no/such/cert.pem': no such file" in message and "keyfile '/no/such/key.pem'" in message
    assert not listener.is_running


@pytest.mark.parametrize("overrides, warned", [
    ({}, False),  # QoS 0: nothing in flight to lose
    ({"qos": 1}, True),
    ({"qos": 2, "cleansession": False}, False),
    ({"custom_topics": {"jobs/+": {"qos": 2}}}, True),
])
def test_qos_with_a_clean_session_is_warned_about(overrides: dict, warned: bool) -> None:
    config = EventListenerConfig(**overrides)
    found = [w for w in config_warnings(config) if "cleansession=True" in w]
    assert bool(found) is warned
    if warned:
        assert "cleansession=False and a fixed client_id" in found[0]


def test_more_publications_in_flight_than_mosquittos_qos2_quota_is_warned_about() -> None:
    """Past its quota Mosquitto drops a QoS 2 publication and answers a 3.1.1 client with an ordinary PUBREC."""
    assert not [w for w in config_warnings(EventListenerConfig()) if "max_inflight_publications" in w]
    [warning] = [w for w in config_warnings(EventListenerConfig(max_inflight_publications=64))
                 if "max_inflight_publications" in w]
    assert "64" in warning and "max_inflight_messages" in warning
