"""Unit tests for Listener.config.settings: EventListenerConfig defaults, validation, redaction and loaders."""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any, Dict

import pytest

import Listener.config.settings as config_module
from Listener import ConfigError, EventListenerConfig
from Listener.config.settings import DUPLICATE_ACTIONS, MAX_PAYLOAD_BYTES
from Listener.core.redaction import MASK, SecretRedactingFilter, mask_uri_credentials, redact, split_uri_credentials


PASSWORD = "pw-Zq81-never-shown"


def config_error(**kwargs: Any) -> str:
    """Build a config that must be rejected; return the error message."""
    with pytest.raises(ConfigError) as info:
        EventListenerConfig(**kwargs)
    assert isinstance(info.value, ValueError)
    return str(info.value)


# -- defaults ---------------------------------------------------------------------------------------

DOCUMENTED_DEFAULTS: Dict[str, Any] = {
    "host": "localhost",
    "port": 1883,
    "client_id": "event-listener",
    "username": "test",
    "password": "test",
    "uri": "mqtt://localhost:1883",
    "cafile": None,
    "capath": None,
    "cadata": None,
    "additional_headers": None,
    "keep_alive": 10,
    "ping_delay": 1,
    "default_qos": 0,
    "default_retain": False,
    "auto_reconnect": True,
    "connect_timeout": None,
    "reconnect_retries": 2,
    "reconnect_max_interval": 10,
    "cleansession": True,
    "topic": "test",
    "qos": 0,
    "retain": False,
    "error_topic": "test/error",
    "log_topic": "test/log",
    "results_topic": "test/results",
    "will": None,
    "custom_topics": {},
    "max_jobs_in_memory": 5000,
    "job_cleanup_interval": 259200,
    "job_id_field": "job_id",
    "allow_job_id_generation": False,
    "duplicate_action": "skip",
    "log_topic_level": "WARNING",
}


@pytest.mark.parametrize("name,expected", sorted(DOCUMENTED_DEFAULTS.items()))
def test_default_value(name: str, expected: Any) -> None:
    value = getattr(EventListenerConfig(), name)
    assert value == expected
    if isinstance(expected, bool):
        assert value is expected


def test_documented_fields_come_first_in_manual_order() -> None:
    names = EventListenerConfig.field_names()
    documented = [n for n in DOCUMENTED_DEFAULTS if n != "log_topic_level"]
    assert list(names[:len(documented)]) == documented
    assert names == tuple(f.name for f in dataclasses.fields(EventListenerConfig))


def test_max_jobs_default_is_5000_not_the_manual_test_value() -> None:
    assert EventListenerConfig().max_jobs_in_memory == 5000


def test_custom_topics_default_is_not_shared_between_instances() -> None:
    first, second = EventListenerConfig(), EventListenerConfig()
    assert first.custom_topics == {} and first.custom_topics is not second.custom_topics


def test_additional_fields_have_defaults() -> None:
    cfg = EventListenerConfig()
    assert cfg.certfile is None and cfg.keyfile is None
    assert cfg.tls_check_hostname is True
    assert cfg.max_payload_bytes == MAX_PAYLOAD_BYTES == 1024 * 1024
    assert cfg.shutdown_grace_period > 0
    assert set(DUPLICATE_ACTIONS) == {"skip", "reprocess", "error"}


@pytest.mark.parametrize("name", ["port", "host", "uri", "password", "custom_topics", "log_topic_level"])
def test_config_is_frozen(name: str) -> None:
    cfg = EventListenerConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(cfg, name, getattr(cfg, name))


# -- manual examples --------------------------------------------------------------------------------


def test_manual_minimal_setup() -> None:
    cfg = EventListenerConfig(host="localhost", port=1883, topic="events")
    assert cfg.topic == "events" and cfg.uri == "mqtt://localhost:1883"


def test_manual_complete_configuration() -> None:
    cfg = EventListenerConfig(
        host="mqtt.example.com", port=8883, client_id="my-listener", username="mqtt_user",
        password="secure_password", uri="mqtts://mqtt.example.com:8883", cafile="/path/to/ca.crt",
        capath="/path/to/ca/", cadata="----BEGIN CERTIFICATE----...", keep_alive=60, ping_delay=1,
        auto_reconnect=True, reconnect_retries=5, cleansession=False, topic="events/+", qos=1, retain=False,
        error_topic="events/errors", log_topic="events/logs", results_topic="events/results",
        max_jobs_in_memory=10000, job_cleanup_interval=3600, allow_job_id_generation=True,
        duplicate_action="reprocess",
    )
    assert cfg.uri == "mqtts://mqtt.example.com:8883"
    assert cfg.uses_tls
    assert (cfg.max_jobs_in_memory, cfg.job_cleanup_interval, cfg.duplicate_action) == (10000, 3600, "reprocess")


def test_manual_will_and_custom_topics_examples() -> None:
    cfg = EventListenerConfig(
        will={"topic": "status/offline", "message": "Client disconnected", "qos": 1, "retain": True},
        custom_topics={"alerts": {"qos": 2, "retain": True}, "metrics": {"qos": 0, "retain": False},
                       "commands": {"qos": 1, "retain": False}},
    )
    assert cfg.will is not None and cfg.will["qos"] == 1
    assert cfg.custom_topics["alerts"] == {"qos": 2, "retain": True}


@pytest.mark.parametrize("topic", ["devices/+/events", "events/#"])
def test_manual_wildcard_topics(topic: str) -> None:
    assert EventListenerConfig(topic=topic).topic == topic


def test_manual_fixtures() -> None:
    sample = EventListenerConfig(host="test-broker", port=1883, topic="test/events", client_id="test-client",
                                 max_jobs_in_memory=100, job_cleanup_interval=60)
    assert sample.uri == "mqtt://test-broker:1883"
    ssl = EventListenerConfig(host="ssl-broker", port=8883, cafile="/path/to/test-ca.crt", topic="secure/events")
    assert ssl.uri == "mqtts://ssl-broker:8883"


def test_manual_environment_example_with_unset_variables() -> None:
    # Manual §5.3.3 passes os.getenv() results, which are None when the variables are unset.
    cfg = EventListenerConfig(host="localhost", port=1883, username=None, password=None, topic="events")
    assert cfg.username is None and cfg.password is None
    assert "password=None" in repr(cfg)


def test_manual_validation_example_raises_value_error() -> None:
    with pytest.raises(ValueError):
        EventListenerConfig(host="invalid-host", port=99999, qos=5)


def test_manual_invalid_configuration() -> None:
    with pytest.raises(ValueError):
        EventListenerConfig(port=-1)
    with pytest.raises(ValueError):
        EventListenerConfig(qos=5)


# -- uri ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("host,port,expected", [
    ("localhost", 1883, "mqtt://localhost:1883"),
    ("mqtt.example.com", 8883, "mqtt://mqtt.example.com:8883"),
    ("ssl-broker", 8884, "mqtt://ssl-broker:8884"),
])
def test_uri_generation(host: str, port: int, expected: str) -> None:
    config = EventListenerConfig(host=host, port=port)
    assert config.uri == expected


def test_uri_from_host_and_port() -> None:
    assert EventListenerConfig(host="h", port=8884).uri == "mqtt://h:8884"


@pytest.mark.parametrize("tls", [
    {"cafile": "ca.crt"},
    {"capath": "/etc/ssl/certs"},
    {"cadata": "-----BEGIN CERTIFICATE-----"},
    {"certfile": "client.crt", "keyfile": "client.key"},
])
def test_uri_is_mqtts_when_a_tls_option_is_set(tls: Dict[str, str]) -> None:
    cfg = EventListenerConfig(host="h", port=8883, **tls)
    assert cfg.uri == "mqtts://h:8883"
    assert cfg.uses_tls


def test_plain_config_does_not_use_tls() -> None:
    assert not EventListenerConfig().uses_tls


@pytest.mark.parametrize("host,expected", [
    ("::1", "mqtt://[::1]:1883"),
    ("2001:db8::17", "mqtt://[2001:db8::17]:1883"),
    ("127.0.0.1", "mqtt://127.0.0.1:1883"),
])
def test_uri_brackets_ipv6_hosts(host: str, expected: str) -> None:
    assert EventListenerConfig(host=host).uri == expected


@pytest.mark.parametrize("uri", ["mqtt://other:1234", "mqtts://secure.example:8883", "ws://h:80/mqtt",
                                 "mqtt://alice:secret@broker:1883"])
def test_explicit_uri_is_kept(uri: str) -> None:
    assert EventListenerConfig(host="ignored", port=1, uri=uri).uri == uri


def test_explicit_secure_uri_means_tls() -> None:
    assert EventListenerConfig(uri="wss://h:443/mqtt").uses_tls


# -- validation ------------------------------------------------------------------------------------


@pytest.mark.parametrize("port", [0, -1, 65536, 99999, "1883", True, 1883.0, None])
def test_invalid_port(port: Any) -> None:
    message = config_error(port=port)
    assert "port" in message and repr(port) in message


@pytest.mark.parametrize("port", [1, 1883, 65535])
def test_valid_port_bounds(port: int) -> None:
    assert EventListenerConfig(port=port).port == port


@pytest.mark.parametrize("name", ["qos", "default_qos"])
@pytest.mark.parametrize("value", [-1, 3, 5, "1", True, 1.0, None])
def test_invalid_qos_fields(name: str, value: Any) -> None:
    message = config_error(**{name: value})
    assert name in message and repr(value) in message


@pytest.mark.parametrize("value", [0, 1, 2])
def test_valid_qos_values(value: int) -> None:
    cfg = EventListenerConfig(qos=value, default_qos=value, will={"topic": "w", "message": "m", "qos": value},
                              custom_topics={"c": {"qos": value}})
    assert cfg.qos == cfg.default_qos == value


@pytest.mark.parametrize("value", [3, -1, "2", False])
def test_invalid_will_qos(value: Any) -> None:
    message = config_error(will={"topic": "status/offline", "message": "bye", "qos": value})
    assert "will" in message and repr(value) in message


@pytest.mark.parametrize("value", [3, -1, "2", True])
def test_invalid_custom_topic_qos(value: Any) -> None:
    message = config_error(custom_topics={"alerts": {"qos": value}})
    assert "custom_topics" in message and "alerts" in message and repr(value) in message


@pytest.mark.parametrize("name", ["keep_alive", "ping_delay", "reconnect_max_interval", "connect_timeout",
                                  "job_cleanup_interval", "shutdown_grace_period"])
@pytest.mark.parametrize("value", [0, -1])
def test_non_positive_durations_rejected(name: str, value: int) -> None:
    message = config_error(**{name: value})
    assert name in message and repr(value) in message


@pytest.mark.parametrize("name,value", [
    ("keep_alive", 10.5), ("keep_alive", "10"), ("ping_delay", True),
    ("reconnect_max_interval", "10"), ("reconnect_max_interval", float("inf")),
    ("connect_timeout", "5"), ("connect_timeout", float("nan")), ("job_cleanup_interval", None),
])
def test_wrongly_typed_durations_rejected(name: str, value: Any) -> None:
    message = config_error(**{name: value})
    assert name in message


def test_valid_durations() -> None:
    cfg = EventListenerConfig(keep_alive=60, ping_delay=5, reconnect_max_interval=0.5, connect_timeout=2.5,
                              job_cleanup_interval=0.1)
    assert cfg.connect_timeout == 2.5


@pytest.mark.parametrize("keep_alive,ping_delay", [(10, 10), (5, 6), (1, 1)])
def test_ping_delay_must_be_smaller_than_keep_alive(keep_alive: int, ping_delay: int) -> None:
    message = config_error(keep_alive=keep_alive, ping_delay=ping_delay)
    assert "ping_delay" in message and str(ping_delay) in message and "keep_alive" in message


@pytest.mark.parametrize("value", ["3", 2.0, None, True])
def test_reconnect_retries_must_be_int(value: Any) -> None:
    message = config_error(reconnect_retries=value)
    assert "reconnect_retries" in message and repr(value) in message


@pytest.mark.parametrize("value", [-1, 0, 10])
def test_reconnect_retries_any_int_including_negative(value: int) -> None:
    assert EventListenerConfig(reconnect_retries=value).reconnect_retries == value


@pytest.mark.parametrize("value", [0, -5, "100", 10.0, True])
def test_max_jobs_in_memory_must_be_positive_int(value: Any) -> None:
    message = config_error(max_jobs_in_memory=value)
    assert "max_jobs_in_memory" in message and repr(value) in message


@pytest.mark.parametrize("value", [0, -1, "big"])
def test_max_payload_bytes_must_be_positive_int(value: Any) -> None:
    message = config_error(max_payload_bytes=value)
    assert "max_payload_bytes" in message and repr(value) in message


@pytest.mark.parametrize("value", ["ignore", "SKIP", ""])
def test_unknown_duplicate_action(value: str) -> None:
    message = config_error(duplicate_action=value)
    assert "duplicate_action" in message and repr(value) in message


@pytest.mark.parametrize("value", ["skip", "reprocess", "error"])
def test_known_duplicate_actions(value: str) -> None:
    assert EventListenerConfig(duplicate_action=value).duplicate_action == value


def test_log_topic_level() -> None:
    assert EventListenerConfig(log_topic_level="info").log_topic_level == "info"
    message = config_error(log_topic_level="LOUD")
    assert "log_topic_level" in message and "'LOUD'" in message


@pytest.mark.parametrize("topic", ["a/#/b", "a+", "a/b#", "", "a/+b/c", "#/a", "$share//a", "$share/g",
                                   "$share/g/", "$share/g+/a", "nul\x00"])
def test_malformed_topic_filter(topic: str) -> None:
    message = config_error(topic=topic)
    assert "topic" in message and repr(topic) in message


@pytest.mark.parametrize("topic", ["#", "+/x", "$share/g/a/#", "a/+/c", "a/b/c", "/", "$SYS/#"])
def test_well_formed_topic_filter(topic: str) -> None:
    assert EventListenerConfig(topic=topic).topic == topic


@pytest.mark.parametrize("name", ["error_topic", "log_topic", "results_topic"])
@pytest.mark.parametrize("value", ["a/+", "a/#", "#", "+"])
def test_publish_topics_reject_wildcards(name: str, value: str) -> None:
    message = config_error(**{name: value})
    assert name in message and repr(value) in message


@pytest.mark.parametrize("name", ["error_topic", "results_topic"])
def test_publish_topics_must_not_be_empty(name: str) -> None:
    message = config_error(**{name: ""})
    assert name in message and "''" in message


def test_empty_log_topic_turns_log_events_off() -> None:
    assert EventListenerConfig(log_topic="").log_topic == ""


@pytest.mark.parametrize("will,missing", [
    ({"message": "bye"}, "topic"),
    ({"topic": "status/offline"}, "message"),
    ({}, "topic"),
])
def test_will_needs_topic_and_message(will: Dict[str, Any], missing: str) -> None:
    message = config_error(will=will)
    assert "will" in message and missing in message


def test_will_unknown_keys() -> None:
    message = config_error(will={"topic": "t", "message": "m", "colour": "red"})
    assert "will" in message and "colour" in message


@pytest.mark.parametrize("will,fragment", [
    ("status/offline", "'status/offline'"),
    ({"topic": "status/#", "message": "bye"}, "'status/#'"),
    ({"topic": "", "message": "bye"}, "''"),
    ({"topic": "t", "message": 42}, "42"),
    ({"topic": "t", "message": "m", "retain": "yes"}, "'yes'"),
])
def test_will_bad_values(will: Any, fragment: str) -> None:
    message = config_error(will=will)
    assert "will" in message and fragment in message


def test_will_message_may_be_bytes() -> None:
    assert EventListenerConfig(will={"topic": "t", "message": b"bye"}).will == {"topic": "t", "message": b"bye"}


@pytest.mark.parametrize("custom,fragment", [
    ({"alerts": {"priority": 1}}, "priority"),
    ({"alerts": {"qos": 1, "retain": True, "extra": 0}}, "extra"),
    ({"a/#/b": {"qos": 1}}, "'a/#/b'"),
    ({"": {}}, "''"),
    ({"alerts": 1}, "1"),
    ({"alerts": {"retain": "yes"}}, "'yes'"),
])
def test_custom_topics_bad_entries(custom: Dict[str, Any], fragment: str) -> None:
    message = config_error(custom_topics=custom)
    assert "custom_topics" in message and fragment in message


def test_custom_topics_must_be_a_dict() -> None:
    message = config_error(custom_topics=["alerts"])
    assert "custom_topics" in message and "['alerts']" in message


def test_custom_topics_allow_wildcard_filters() -> None:
    cfg = EventListenerConfig(custom_topics={"sensors/+/temp": {"qos": 1}, "logs/#": {}})
    assert set(cfg.custom_topics) == {"sensors/+/temp", "logs/#"}


def test_certfile_without_keyfile() -> None:
    message = config_error(certfile="client.crt")
    assert "certfile" in message and "'client.crt'" in message and "keyfile" in message


def test_keyfile_without_certfile() -> None:
    message = config_error(keyfile="client.key")
    assert "keyfile" in message and "'client.key'" in message


@pytest.mark.parametrize("uri", ["http://host:1883", "localhost:1883", "mqtt://", "tcp://h:1883", ""])
def test_bad_uri(uri: str) -> None:
    message = config_error(uri=uri)
    assert "uri" in message and repr(uri) in message


@pytest.mark.parametrize("uri", ["mqtt://h:99999", "mqtt://h:0", "mqtt://h:abc", "mqtt://[::1:1883", "mqtt://:1883",
                                 "mqtt://user@"])
def test_uri_with_bad_port_or_no_host(uri: str) -> None:
    # The uri is what the client connects to: its port needs the same 1-65535 check as ``port``, and it
    # needs a host. (Accepting these makes later code that reads ``urlsplit(uri).port`` raise ValueError.)
    message = config_error(uri=uri)
    assert "uri" in message and repr(uri) in message


def test_bad_uri_message_hides_credentials() -> None:
    message = config_error(uri=f"http://bob:{PASSWORD}@host:1883")
    assert "uri" in message and "http://bob:" in message
    assert PASSWORD not in message


@pytest.mark.parametrize("name", ["default_retain", "auto_reconnect", "cleansession", "retain",
                                  "allow_job_id_generation", "tls_check_hostname"])
@pytest.mark.parametrize("value", ["yes", 1, None])
def test_bool_fields_reject_other_types(name: str, value: Any) -> None:
    message = config_error(**{name: value})
    assert name in message and repr(value) in message


@pytest.mark.parametrize("name", ["host", "client_id", "topic", "error_topic", "log_topic", "results_topic",
                                  "job_id_field", "duplicate_action", "log_topic_level"])
@pytest.mark.parametrize("value", [123, None, b"bytes"])
def test_string_fields_reject_other_types(name: str, value: Any) -> None:
    message = config_error(**{name: value})
    assert name in message and repr(value) in message


@pytest.mark.parametrize("name", ["username", "uri", "cafile", "capath", "cadata", "certfile", "keyfile"])
def test_optional_string_fields_reject_other_types(name: str) -> None:
    message = config_error(**{name: 1234})
    assert name in message and "1234" in message


@pytest.mark.parametrize("name", ["host", "client_id", "job_id_field"])
def test_required_strings_must_not_be_empty(name: str) -> None:
    message = config_error(**{name: ""})
    assert name in message and "''" in message


def test_blank_host_rejected() -> None:
    assert "host" in config_error(host="   ")


def test_additional_headers_must_be_dict() -> None:
    message = config_error(additional_headers=["X-Auth: 1"])
    assert "additional_headers" in message
    assert EventListenerConfig(additional_headers={"X-A": "1"}).additional_headers == {"X-A": "1"}


# -- secrets ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("password", [12345, b"pw-bytes-secret", ["pw-in-list"]])
def test_bad_password_is_never_in_the_message(password: Any) -> None:
    message = config_error(password=password)
    assert "password" in message
    assert repr(password) not in message and str(password) not in message


def test_password_not_in_messages_about_other_fields() -> None:
    for bad in ({"port": 0}, {"qos": 9}, {"topic": "a/#/b"}, {"keep_alive": -1}):
        message = config_error(password=PASSWORD, username="alice", **bad)
        assert PASSWORD not in message


def test_repr_and_str_hide_the_password_but_show_other_fields() -> None:
    cfg = EventListenerConfig(host="broker.example", port=8883, username="alice", password=PASSWORD,
                              client_id="cid-7", topic="jobs/#")
    for text in (repr(cfg), str(cfg), f"{cfg}", repr([cfg])):
        assert PASSWORD not in text
        assert "password='***'" in text
        for shown in ("broker.example", "8883", "alice", "cid-7", "jobs/#", "EventListenerConfig("):
            assert shown in text


def test_repr_hides_uri_credentials() -> None:
    cfg = EventListenerConfig(uri=f"mqtt://alice:{PASSWORD}@broker.example:1883", password="other-pw-99")
    for text in (repr(cfg), str(cfg)):
        assert PASSWORD not in text and "other-pw-99" not in text
        assert "mqtt://alice:***@broker.example:1883" in text
    assert cfg.uri == f"mqtt://alice:{PASSWORD}@broker.example:1883"


def test_repr_hides_uri_password_containing_at_sign() -> None:
    # An unencoded '@' in the password is still a password: urllib (and so amqtt) splits user info
    # at the *last* '@', so the broker receives "top@Zq81secret" -- repr must not show any part of it.
    cfg = EventListenerConfig(uri="mqtt://alice:top@Zq81secret@broker.example:1883")
    assert "Zq81secret" not in repr(cfg)
    assert "Zq81secret" not in cfg.redacted_dict()["uri"]
    assert cfg.redacted_dict()["uri"] == "mqtt://alice:***@broker.example:1883"


def test_repr_shows_certificate_data_placeholder() -> None:
    cfg = EventListenerConfig(cadata="-----BEGIN CERTIFICATE-----MIIB")
    assert "MIIB" not in repr(cfg) and "cadata='<certificate data>'" in repr(cfg)


def test_redacted_dict() -> None:
    cfg = EventListenerConfig(password=PASSWORD, uri=f"mqtt://bob:{PASSWORD}@h:1883", topic="t/#")
    data = cfg.redacted_dict()
    assert set(data) == set(EventListenerConfig.field_names())
    assert data["password"] == "***"
    assert data["uri"] == "mqtt://bob:***@h:1883"
    assert data["topic"] == "t/#" and data["port"] == 1883
    assert PASSWORD not in json.dumps(data, default=str)
    assert cfg.password == PASSWORD  # the config itself is untouched


def test_redacted_dict_keeps_none_password() -> None:
    data = EventListenerConfig(username=None, password=None).redacted_dict()
    assert data["password"] is None and data["uri"] == "mqtt://localhost:1883"


# -- redaction helpers (used by repr, logs and events) ----------------------------------------------


@pytest.mark.parametrize("text,expected", [
    ("mqtt://alice:pw@h:1883", "mqtt://alice:***@h:1883"),
    ("mqtt://alice@h:1883", "mqtt://alice@h:1883"),
    ("mqtt://h:1883", "mqtt://h:1883"),
    ("mqtts://a:p%40ss@h/x", "mqtts://a:***@h/x"),
    ("mqtt://a:p@ss@h:1883", "mqtt://a:***@h:1883"),
    ("from mqtt://a:one@h1 to ws://b:two@h2/mqtt", "from mqtt://a:***@h1 to ws://b:***@h2/mqtt"),
    ("no uri here: user:pass@host", "no uri here: user:pass@host"),
])
def test_mask_uri_credentials(text: str, expected: str) -> None:
    assert mask_uri_credentials(text) == expected
    assert MASK == "***"


@pytest.mark.parametrize("uri,expected", [
    ("mqtt://h:1883", ("mqtt://h:1883", None, None)),
    ("mqtt://alice:pw@h:1883", ("mqtt://h:1883", "alice", "pw")),
    ("mqtt://alice@h:1883/p?q=1", ("mqtt://h:1883/p?q=1", "alice", None)),
    ("mqtt://:pw@h:1883", ("mqtt://h:1883", None, "pw")),
    ("mqtt://a:p@ss@h:1883", ("mqtt://h:1883", "a", "p@ss")),
    ("mqtt://a:p%40ss@h:1883", ("mqtt://h:1883", "a", "p%40ss")),
])
def test_split_uri_credentials(uri: str, expected: tuple) -> None:
    assert split_uri_credentials(uri) == expected


def test_redact_masks_uris_and_given_secrets() -> None:
    text = f"connect mqtt://bob:{PASSWORD}@h failed; password {PASSWORD} and token abc refused"
    cleaned = redact(text, (PASSWORD, "", "abc"))
    assert PASSWORD not in cleaned and "abc" not in cleaned
    assert cleaned == "connect mqtt://bob:***@h failed; password *** and token *** refused"
    assert redact("nothing secret") == "nothing secret"


def make_record(msg: Any, args: Any = None) -> logging.LogRecord:
    return logging.LogRecord("amqtt.client", logging.DEBUG, __file__, 1, msg, args, None)


def test_secret_redacting_filter() -> None:
    log_filter = SecretRedactingFilter((PASSWORD,))
    record = make_record("Connecting to %s with %s", (f"mqtt://u:{PASSWORD}@h:1883", PASSWORD))
    assert log_filter.filter(record) is True
    assert record.getMessage() == "Connecting to mqtt://u:***@h:1883 with ***"
    assert record.args is None

    plain = make_record("nothing to hide")
    assert log_filter.filter(plain) is True
    assert plain.msg == "nothing to hide" and plain.args is None

    formatted = make_record("value %d", (5,))
    assert log_filter.filter(formatted) is True
    assert formatted.getMessage() == "value 5" and formatted.args is None

    broken = make_record("two %s %s", ("only-one",))
    assert log_filter.filter(broken) is True  # left for logging to report
    assert broken.msg == "two %s %s" and broken.args == ("only-one",)
    assert SecretRedactingFilter().secrets == ()


def test_secret_redacting_filter_on_a_logger(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("tests.unit.redaction")
    log_filter = SecretRedactingFilter((PASSWORD,))
    logger.addFilter(log_filter)
    try:
        with caplog.at_level(logging.DEBUG, logger="tests.unit.redaction"):
            logger.debug("uri %s pw %s", f"mqtt://u:{PASSWORD}@h", PASSWORD)
    finally:
        logger.removeFilter(log_filter)
    assert PASSWORD not in caplog.text and "mqtt://u:***@h pw ***" in caplog.text


# -- from_file --------------------------------------------------------------------------------------


def test_from_file_toml(tmp_path: Any) -> None:
    path = tmp_path / "listener.toml"
    path.write_text('host = "mqtt.example.com"\nport = 8883\ntopic = "events/+"\nauto_reconnect = true\n'
                    'max_jobs_in_memory = 10000\n[custom_topics.alerts]\nqos = 2\nretain = true\n', encoding="utf-8")
    cfg = EventListenerConfig.from_file(path)
    assert (cfg.host, cfg.port, cfg.topic, cfg.max_jobs_in_memory) == ("mqtt.example.com", 8883, "events/+", 10000)
    assert cfg.custom_topics == {"alerts": {"qos": 2, "retain": True}}
    assert cfg.uri == "mqtt://mqtt.example.com:8883"
    assert EventListenerConfig.from_file(str(path), port=1884).port == 1884


def test_from_file_json_manual_example(tmp_path: Any) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"host": "mqtt.example.com", "port": 8883, "username": "client", "password": "secret",
                                "topic": "events/+", "auto_reconnect": True, "max_jobs_in_memory": 10000}),
                    encoding="utf-8")
    cfg = EventListenerConfig.from_file(path)
    assert (cfg.host, cfg.port, cfg.username, cfg.password) == ("mqtt.example.com", 8883, "client", "secret")
    assert cfg.auto_reconnect is True and cfg.max_jobs_in_memory == 10000


@pytest.mark.parametrize("suffix,content", [(".toml", 'hots = "typo"\n'), (".json", '{"hots": "typo"}')])
def test_from_file_unknown_key(tmp_path: Any, suffix: str, content: str) -> None:
    path = tmp_path / f"listener{suffix}"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError, match="hots"):
        EventListenerConfig.from_file(path)


@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_from_file_missing(tmp_path: Any, suffix: str) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        EventListenerConfig.from_file(tmp_path / f"missing{suffix}")


@pytest.mark.parametrize("suffix,content", [(".toml", "port = = 1\n"), (".json", "{port: 1}"), (".json", "[1, 2]")])
def test_from_file_unparseable(tmp_path: Any, suffix: str, content: str) -> None:
    path = tmp_path / f"bad{suffix}"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError):
        EventListenerConfig.from_file(path)


def test_from_file_json_not_utf8(tmp_path: Any) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(b'{"host": "\xff"}')
    with pytest.raises(ConfigError, match="Cannot read"):
        EventListenerConfig.from_file(path)


def test_from_file_json_too_large(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config_module, "_CONFIG_FILE_LIMIT", 10)
    path = tmp_path / "big.json"
    path.write_text('{"host": "a-long-host-name"}', encoding="utf-8")
    with pytest.raises(ConfigError, match="too large"):
        EventListenerConfig.from_file(path)


def test_from_file_invalid_value_is_validated(tmp_path: Any) -> None:
    path = tmp_path / "listener.json"
    path.write_text('{"port": 0}', encoding="utf-8")
    with pytest.raises(ConfigError, match="port"):
        EventListenerConfig.from_file(path)


# -- from_env ---------------------------------------------------------------------------------------


def test_from_env_precedence_explicit_env_file_default(tmp_path: Any) -> None:
    path = tmp_path / "listener.toml"
    path.write_text('host = "file-host"\nport = 1111\nclient_id = "file-client"\ntopic = "file/topic"\n',
                    encoding="utf-8")
    environ = {"MQTT_HOST": "env-host", "MQTT_PORT": "2222", "UNRELATED": "x"}
    cfg = EventListenerConfig.from_env(config_file=path, environ=environ, port=3333)
    assert cfg.port == 3333                 # explicit beats environment and file
    assert cfg.host == "env-host"           # environment beats file
    assert cfg.client_id == "file-client"   # file beats default
    assert cfg.topic == "file/topic"
    assert cfg.keep_alive == 10             # default
    assert cfg.uri == "mqtt://env-host:3333"


def test_from_env_without_anything_gives_defaults() -> None:
    assert EventListenerConfig.from_env(environ={}).redacted_dict() == EventListenerConfig().redacted_dict()


def test_from_env_type_conversion() -> None:
    environ = {
        "MQTT_PORT": "8884",
        "MQTT_AUTO_RECONNECT": "false",
        "MQTT_CLEANSESSION": "0",
        "MQTT_RETAIN": "yes",
        "MQTT_CUSTOM_TOPICS": '{"alerts": {"qos": 2, "retain": true}}',
        "MQTT_WILL": '{"topic": "status/offline", "message": "gone"}',
        "MQTT_CONNECT_TIMEOUT": "2.5",
        "MQTT_RECONNECT_RETRIES": "-1",
        "MQTT_KEEP_ALIVE": "30",
        "MQTT_PASSWORD": PASSWORD,
        "MQTT_TOPIC": "events/#",
    }
    cfg = EventListenerConfig.from_env(environ=environ)
    assert cfg.port == 8884
    assert cfg.auto_reconnect is False and cfg.cleansession is False and cfg.retain is True
    assert cfg.custom_topics == {"alerts": {"qos": 2, "retain": True}}
    assert cfg.will == {"topic": "status/offline", "message": "gone"}
    assert cfg.connect_timeout == 2.5 and cfg.reconnect_retries == -1 and cfg.keep_alive == 30
    assert cfg.password == PASSWORD and cfg.topic == "events/#"


def test_from_env_custom_prefix() -> None:
    cfg = EventListenerConfig.from_env("APP_", environ={"APP_HOST": "app-host", "MQTT_HOST": "ignored"})
    assert cfg.host == "app-host"


def test_from_env_manual_ca_file_alias() -> None:
    cfg = EventListenerConfig.from_env(environ={"MQTT_CA_FILE": "/etc/ssl/ca.crt", "MQTT_HOST": "h"})
    assert cfg.cafile == "/etc/ssl/ca.crt"
    assert cfg.uri == "mqtts://h:1883"


@pytest.mark.parametrize("variable,raw", [
    ("MQTT_PORT", "eighty"),
    ("MQTT_KEEP_ALIVE", "1.5"),
    ("MQTT_AUTO_RECONNECT", "perhaps"),
    ("MQTT_CUSTOM_TOPICS", "{not json"),
    ("MQTT_CONNECT_TIMEOUT", "soon"),
])
def test_from_env_bad_value_names_variable_and_hides_password(variable: str, raw: str) -> None:
    environ = {"MQTT_PASSWORD": PASSWORD, variable: raw}
    with pytest.raises(ConfigError) as info:
        EventListenerConfig.from_env(environ=environ, username="alice")
    message = str(info.value)
    assert variable in message and raw in message
    assert PASSWORD not in message


def test_from_env_valid_conversion_invalid_value() -> None:
    with pytest.raises(ConfigError, match="port") as info:
        EventListenerConfig.from_env(environ={"MQTT_PORT": "70000", "MQTT_PASSWORD": PASSWORD})
    assert PASSWORD not in str(info.value)


def test_option_kinds_come_from_the_type_hints() -> None:
    kinds = config_module.option_kinds()
    assert list(kinds) == list(EventListenerConfig.field_names())
    assert kinds["port"] == config_module.OptionKind(int, optional=False)
    assert kinds["password"] == config_module.OptionKind(str, optional=True)
    assert kinds["http_port"] == config_module.OptionKind(int, optional=True)
    assert kinds["will"] == config_module.OptionKind(dict, optional=True)
    assert kinds["custom_topics"] == config_module.OptionKind(dict, optional=False)
    assert kinds["keep_job_input"].type is bool and kinds["job_timeout"].type is float


def test_retry_settings_default_to_no_retries_and_a_one_second_backoff() -> None:
    cfg = EventListenerConfig()
    assert cfg.max_retries == 0 and cfg.retry_backoff == 1.0
    assert EventListenerConfig(max_retries=config_module.MAX_RETRIES, retry_backoff=0).retry_backoff == 0


@pytest.mark.parametrize("name, value, why", [
    ("max_retries", -1, "integer from 0"),
    ("max_retries", config_module.MAX_RETRIES + 1, "to 100"),
    ("max_retries", 2.0, "integer"),
    ("max_retries", True, "integer"),
    ("retry_backoff", -0.5, "from 0"),
    ("retry_backoff", float("inf"), "number of seconds"),
    ("retry_backoff", config_module.MAX_RETRY_DELAY + 1, "to 300"),
    ("retry_backoff", "1", "number of seconds"),
])
def test_invalid_retry_settings_name_the_field(name: str, value: Any, why: str) -> None:
    with pytest.raises(ConfigError, match=f"Invalid {name}: .*{why}"):
        EventListenerConfig(**{name: value})


def test_retry_settings_from_the_environment() -> None:
    cfg = EventListenerConfig.from_env(environ={"MQTT_MAX_RETRIES": "3", "MQTT_RETRY_BACKOFF": "0.25"})
    assert cfg.max_retries == 3 and cfg.retry_backoff == 0.25


# -- credentials: an empty username means none; a password needs a username --------------------------


def sent_credentials(cfg: EventListenerConfig) -> tuple:
    from Listener.mqtt.client import credentials

    return credentials(cfg)[1:]


def test_the_defaults_send_the_manuals_test_credentials() -> None:
    assert sent_credentials(EventListenerConfig()) == ("test", "test")
    assert config_module.PUBLIC_DEFAULT_PASSWORD == "test"


@pytest.mark.parametrize("username", ["", None])
@pytest.mark.parametrize("password", ["test", "", None])
def test_no_username_means_no_credentials_at_all(username: Any, password: Any) -> None:
    # The default password "test" left in place is not sent: a password without a user name makes
    # Mosquitto close the connection, and `username = ""` in a file clearly means "anonymous".
    cfg = EventListenerConfig(username=username, password=password)
    assert sent_credentials(cfg) == (None, None)
    assert cfg.username == username and cfg.password == password  # what was given is kept


@pytest.mark.parametrize("username", ["", None])
def test_a_password_without_a_username_is_a_config_error_that_hides_it(username: Any) -> None:
    message = config_error(username=username, password=PASSWORD)
    assert PASSWORD not in message
    assert message.startswith(f"Invalid password: {MASK}")
    assert "without a username" in message and "set username" in message


def test_a_username_alone_is_sent_without_a_password() -> None:
    assert sent_credentials(EventListenerConfig(username="alice", password=None)) == ("alice", None)
    assert sent_credentials(EventListenerConfig(username="alice", password="")) == ("alice", "")


def test_uri_credentials_win_over_username_and_password() -> None:
    cfg = EventListenerConfig(uri=f"mqtt://bob:{PASSWORD}@h:1883", username="", password="other-pw-42")
    assert sent_credentials(cfg) == ("bob", PASSWORD)
    cfg = EventListenerConfig(uri="mqtt://bob%40corp:p%2Fw@h:1883", username="alice", password="x")
    assert sent_credentials(cfg) == ("bob@corp", "p/w")


def test_a_uri_without_user_info_leaves_username_and_password_in_charge() -> None:
    assert sent_credentials(EventListenerConfig(uri="mqtt://h:1883", username="")) == (None, None)
    assert sent_credentials(EventListenerConfig(uri="mqtt://h:1883", username="u", password="p")) == ("u", "p")


def test_a_uri_with_a_password_but_no_user_is_a_config_error_that_hides_it() -> None:
    message = config_error(uri=f"mqtt://:{PASSWORD}@h:1883")
    assert PASSWORD not in message
    assert message.startswith("Invalid uri: 'mqtt://:***@h:1883'") and "no user name" in message


def test_credentials_from_a_file(tmp_path: Any) -> None:
    path = tmp_path / "listener.toml"
    path.write_text('username = ""\n', encoding="utf-8")  # a file has no null: "" is how it says "none"
    assert sent_credentials(EventListenerConfig.from_file(path)) == (None, None)
    path.write_text(f'username = ""\npassword = "{PASSWORD}"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="without a username") as info:
        EventListenerConfig.from_file(path)
    assert PASSWORD not in str(info.value)


def test_credentials_from_the_environment() -> None:
    cfg = EventListenerConfig.from_env(environ={"MQTT_USERNAME": ""})
    assert cfg.username == "" and sent_credentials(cfg) == (None, None)
    with pytest.raises(ConfigError, match="without a username") as info:
        EventListenerConfig.from_env(environ={"MQTT_USERNAME": "", "MQTT_PASSWORD": PASSWORD})
    assert PASSWORD not in str(info.value)
    # An explicit username (a constructor argument) completes the environment's password.
    assert sent_credentials(EventListenerConfig.from_env(environ={"MQTT_PASSWORD": PASSWORD}, username="svc")) == (
        "svc", PASSWORD)


@pytest.mark.parametrize("value", [0, -1, 1001, "20", True, 2.5, None])
def test_max_inflight_publications_is_an_integer_from_1_to_1000(value: Any) -> None:
    with pytest.raises(ConfigError, match="max_inflight_publications"):
        EventListenerConfig(max_inflight_publications=value)


def test_max_inflight_publications_defaults_to_mosquittos_qos2_quota() -> None:
    assert EventListenerConfig().max_inflight_publications == 20
    assert EventListenerConfig(max_inflight_publications=1000).max_inflight_publications == 1000


# -- ack_policy = "after_recording" (issue 23, item 2) ---------------------------------------------


def test_after_recording_needs_a_durable_job_store() -> None:
    """It acknowledges a message once its job is recorded: the memory store forgets that record with the process."""
    with pytest.raises(ConfigError, match=r"after_recording needs a durable job_store \(sqlite:/// or redis://\)"):
        EventListenerConfig(ack_policy="after_recording")
    for store in ("sqlite:///jobs.db", "redis://127.0.0.1:6379/0"):
        assert EventListenerConfig(ack_policy="after_recording", job_store=store).ack_policy == "after_recording"


def test_after_recording_is_accepted_from_toml_and_the_environment(tmp_path: Any) -> None:
    path = tmp_path / "listener.toml"
    path.write_text('ack_policy = "after_recording"\njob_store = "sqlite:///jobs.db"\n', encoding="utf-8")
    assert EventListenerConfig.from_file(path).ack_policy == "after_recording"
    environ = {"MQTT_ACK_POLICY": "after_recording", "MQTT_JOB_STORE": "sqlite:///jobs.db"}
    assert EventListenerConfig.from_env(environ=environ).ack_policy == "after_recording"
    with pytest.raises(ConfigError, match="after_recording needs a durable job_store"):
        EventListenerConfig.from_env(environ={"MQTT_ACK_POLICY": "after_recording"})
    with pytest.raises(ConfigError, match="after_processing, after_recording, on_receipt"):
        EventListenerConfig(ack_policy="after_commit")
