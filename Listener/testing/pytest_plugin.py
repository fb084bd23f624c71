"""The ``listener`` pytest plugin (entry point ``pytest11``): fixtures only, no hooks.

- ``mqtt_broker`` (session): a broker on a free loopback port with ``.host``, ``.port`` and ``.kind``:
  the ``mosquitto`` binary when installed, else amqtt's embedded broker; the external broker named by
  ``MQTT_HOST``/``MQTT_PORT`` when both are set. ``LISTENER_TEST_BROKER`` (auto, external, mosquitto,
  embedded) forces one.
- ``listener_config``: an :class:`~Listener.EventListenerConfig` pointing at ``mqtt_broker`` with topics and
  a client id of the test's own (``<prefix>/jobs``, ``/results``, ``/error``, ``/log``).

The Listener package is imported inside the fixtures, not when pytest loads the plugin, so that a
coverage run started after plugin loading still sees the package's modules being imported.
"""

from __future__ import annotations

import os
import re
import uuid
from typing import TYPE_CHECKING, Iterator

import pytest

if TYPE_CHECKING:
    from ..config.settings import EventListenerConfig
    from ..testing import BrokerAddress

__all__ = ["listener_config", "mqtt_broker"]


@pytest.fixture(scope="session")
def mqtt_broker() -> Iterator["BrokerAddress"]:
    """A broker for this test session (stopped at its end; an external one is left alone)."""
    from ..testing import running_broker

    with running_broker() as broker:
        yield broker


@pytest.fixture
def listener_config(mqtt_broker: "BrokerAddress", request: pytest.FixtureRequest) -> "EventListenerConfig":
    """A config for ``mqtt_broker`` whose topics and client id belong to this test alone."""
    from ..config.settings import EventListenerConfig

    name = re.sub(r"[^A-Za-z0-9_-]+", "-", request.node.name)[:48]
    prefix = f"listener-test/{name}-{uuid.uuid4().hex[:8]}"
    external = mqtt_broker.kind == "external"
    return EventListenerConfig(
        host=mqtt_broker.host, port=mqtt_broker.port,
        username=os.environ.get("MQTT_USERNAME") if external else None,
        password=os.environ.get("MQTT_PASSWORD") if external else None,
        client_id=f"test-listener-{uuid.uuid4().hex[:12]}",
        topic=f"{prefix}/jobs", results_topic=f"{prefix}/results", error_topic=f"{prefix}/error",
        log_topic=f"{prefix}/log", reconnect_retries=0, connect_timeout=10,
    )
