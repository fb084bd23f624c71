"""Fixtures for tests against a real broker: one mosquitto per session, started only when needed.

With MQTT_HOST and MQTT_PORT set, the plain endpoint is that external broker (with MQTT_USERNAME /
MQTT_PASSWORD when set) and tests needing the password or TLS listeners are skipped.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from typing import Any, AsyncIterator, Callable, Iterator, List, Optional, Tuple

import pytest

from Listener import EventListener
from tests.support.brokers import (BrokerEndpoint, MosquittoBroker, MqttProbe, TlsMaterial, broker_factory,
                                   generate_tls_material, session_folder)
from tests.support.listeners import READY_TIMEOUT, StartListener, listener_config, run_until_ready, stop_listeners
from tests.support.proxy import TcpProxy

__all__ = ["broker_factory"]  # a fixture defined in tests/support/brokers.py

EXTERNAL = bool(os.getenv("MQTT_HOST") and os.getenv("MQTT_PORT"))


@pytest.fixture(scope="session")
def tls_material() -> Iterator[TlsMaterial]:
    folder = session_folder()
    yield generate_tls_material(folder / "tls")
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def mosquitto(tls_material: TlsMaterial) -> Iterator[Optional[MosquittoBroker]]:
    if EXTERNAL:
        yield None
        return
    folder = session_folder()
    broker = MosquittoBroker(folder, tls=tls_material)
    broker.start()
    yield broker
    broker.stop()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def mqtt_endpoint(mosquitto: Optional[MosquittoBroker]) -> BrokerEndpoint:
    if mosquitto is None:
        return BrokerEndpoint(os.environ["MQTT_HOST"], int(os.environ["MQTT_PORT"]),
                              os.getenv("MQTT_USERNAME"), os.getenv("MQTT_PASSWORD"))
    return mosquitto.plain


def _started_broker(mosquitto: Optional[MosquittoBroker]) -> MosquittoBroker:
    if mosquitto is None:
        pytest.skip("needs the test-started mosquitto (MQTT_HOST/MQTT_PORT point at an external broker)")
    return mosquitto


@pytest.fixture(scope="session")
def mqtt_auth_endpoint(mosquitto: Optional[MosquittoBroker]) -> BrokerEndpoint:
    return _started_broker(mosquitto).auth


@pytest.fixture(scope="session")
def mqtt_tls_endpoint(mosquitto: Optional[MosquittoBroker]) -> BrokerEndpoint:
    return _started_broker(mosquitto).secure


@pytest.fixture
def mqtt_username(mqtt_auth_endpoint: BrokerEndpoint) -> str:
    """Manual §9.4.1 (the environment wins when set)."""
    return os.getenv("MQTT_USERNAME") or mqtt_auth_endpoint.username or "user"


@pytest.fixture
def mqtt_password(mqtt_auth_endpoint: BrokerEndpoint) -> str:
    return os.getenv("MQTT_PASSWORD") or mqtt_auth_endpoint.password or "password"


@pytest.fixture
def probe(mqtt_endpoint: BrokerEndpoint) -> Iterator[Callable[..., MqttProbe]]:
    """A factory of paho clients on the plain endpoint (or the endpoint given), closed after the test."""
    made: List[MqttProbe] = []

    def make(*subscriptions: str, endpoint: Optional[BrokerEndpoint] = None) -> MqttProbe:
        client = MqttProbe(endpoint or mqtt_endpoint)
        made.append(client)
        for topic_filter in subscriptions:
            client.subscribe(topic_filter)
        return client

    yield make
    for client in made:
        client.close()


ProxyFactory = Callable[..., TcpProxy]


@pytest.fixture
def proxy_factory(mqtt_endpoint: BrokerEndpoint) -> Iterator[ProxyFactory]:
    """``proxy_factory(endpoint=None)``: a started :class:`TcpProxy` to ``endpoint`` (the plain broker by default).

    Connect the listener to ``via(proxy)`` (tests/support/listeners.py); every proxy is closed after the test.
    """
    made: List[TcpProxy] = []

    def make(endpoint: Optional[BrokerEndpoint] = None) -> TcpProxy:
        target = endpoint or mqtt_endpoint
        proxy = TcpProxy(target.host, target.port).start()
        made.append(proxy)
        return proxy

    try:
        yield make
    finally:
        for proxy in made:
            proxy.close()


@pytest.fixture
async def start_listener(mqtt_endpoint: BrokerEndpoint, unique_topic: str) -> AsyncIterator[StartListener]:
    """Start ``EventListener.run(processor)`` in a task and wait until it is subscribed; stopped after the test."""
    running: List[Tuple[EventListener, "asyncio.Task[None]"]] = []

    async def start(processor: Any = None, endpoint: Optional[BrokerEndpoint] = None,
                    **overrides: Any) -> Tuple[EventListener, "asyncio.Task[None]"]:
        listener = EventListener(listener_config(endpoint or mqtt_endpoint, unique_topic, **overrides))
        task = await run_until_ready(listener, processor)
        running.append((listener, task))
        return listener, task

    yield start
    await stop_listeners(running, READY_TIMEOUT)
