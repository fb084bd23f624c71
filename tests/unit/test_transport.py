"""The amqtt adapter's pure helpers: which strings are secrets, endpoint labels, amqtt's config."""

from __future__ import annotations

import pytest

from Listener import EventListenerConfig
from Listener.transport import build_client_config, endpoint_label, secrets

pytestmark = pytest.mark.unit


def test_the_manuals_public_default_password_is_not_masked_in_text() -> None:
    assert secrets(EventListenerConfig()) == ()


def test_real_passwords_are_secrets_wherever_they_come_from() -> None:
    assert secrets(EventListenerConfig(password="s3cret-pw")) == ("s3cret-pw",)
    from_uri = EventListenerConfig(password="field-pw", uri="mqtt://u:uri%40pw@h:1883")
    assert set(secrets(from_uri)) == {"uri@pw", "field-pw"}
    assert secrets(EventListenerConfig(password=None)) == ()


def test_endpoint_label_never_carries_credentials() -> None:
    assert endpoint_label(EventListenerConfig(uri="mqtts://u:p@broker.example")) == "broker.example:8883"
    assert endpoint_label(EventListenerConfig(host="h", port=1884)) == "h:1884"


def test_amqtt_config_has_no_credentials_no_plugins_and_our_own_reconnect() -> None:
    built = build_client_config(EventListenerConfig(uri="mqtt://u:p@h:1883", keep_alive=7, ping_delay=2))
    assert built["connection"]["uri"] == "mqtt://h:1883"
    assert built["plugins"] == {} and built["auto_reconnect"] is False
    assert (built["keep_alive"], built["ping_delay"]) == (7, 2)
