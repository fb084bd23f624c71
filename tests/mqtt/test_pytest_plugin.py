"""The `listener` pytest plugin as a user gets it: a fresh pytest process loading it from its entry point."""

from __future__ import annotations

from pathlib import Path
from typing import Dict

import pytest

from tests.support.brokers import BrokerEndpoint, find_binary


USER_TESTS = (Path(__file__).parent.parent / "support" / "sample_user_tests.py").read_text(encoding="utf-8")
KIND_TEST = '''
import os

def test_broker_kind(mqtt_broker, listener_config):
    assert mqtt_broker.kind == os.environ["EXPECTED_BROKER_KIND"]
    assert (listener_config.host, listener_config.port) == (mqtt_broker.host, mqtt_broker.port)
    assert listener_config.topic.endswith("/jobs") and "test_broker_kind" in listener_config.topic
'''


def run_user_tests(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, env: Dict[str, str]) -> None:
    for name in ("MQTT_HOST", "MQTT_PORT", "LISTENER_TEST_BROKER"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    pytester.makepyfile(test_user=USER_TESTS, test_kind=KIND_TEST)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-W", "error::pytest.PytestCollectionWarning",
                                           timeout=90)
    result.assert_outcomes(passed=3)


@pytest.mark.skipif(find_binary("mosquitto") is None,
                    reason="the auto choice is mosquitto only where it is installed")
def test_fixtures_start_mosquitto_when_installed(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    run_user_tests(pytester, monkeypatch, {"EXPECTED_BROKER_KIND": "mosquitto"})


def test_fixtures_fall_back_to_amqtts_embedded_broker(pytester: pytest.Pytester,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    run_user_tests(pytester, monkeypatch, {"LISTENER_TEST_BROKER": "embedded", "EXPECTED_BROKER_KIND": "embedded"})


def test_fixtures_use_the_external_broker_of_mqtt_host_and_port(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch,
                                                                mqtt_endpoint: BrokerEndpoint) -> None:
    if mqtt_endpoint.username:
        pytest.skip("the plugin's external broker is used anonymously here")
    run_user_tests(pytester, monkeypatch, {"MQTT_HOST": mqtt_endpoint.host, "MQTT_PORT": str(mqtt_endpoint.port),
                                           "EXPECTED_BROKER_KIND": "external"})


def test_plugin_module_defines_fixtures_and_no_hooks() -> None:
    import Listener.testing.pytest_plugin as plugin

    hooks = [name for name in vars(plugin) if name.startswith("pytest_")]
    assert hooks == []
    assert set(plugin.__all__) == {"mqtt_broker", "listener_config"}
