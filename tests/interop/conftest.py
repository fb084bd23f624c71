"""Fixtures of the interop tier: brokers this project did not write (tests/support/interop_brokers.py).

``interop_broker`` is one running broker per kind for the whole session (tests parametrized over it run
kind by kind); the tests that restart brokers have private ones (test_restarts.py). A kind that cannot run on
this machine is skipped with the reason, or fails under ``make test-interop`` (``LISTENER_INTEROP_REQUIRED``).
These tests ignore ``MQTT_HOST``/``MQTT_PORT``: they always start their own brokers.
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Callable, Iterator, List, Optional, Tuple

import pytest

from Listener import EventListener
from tests.support.brokers import BrokerEndpoint, MqttProbe, session_folder
from tests.support.interop_brokers import KINDS, InteropBroker, make_broker, require
from tests.support.listeners import READY_TIMEOUT, StartListener, listener_config, run_until_ready, stop_listeners


@pytest.fixture(scope="session", params=KINDS)
def interop_broker(request: pytest.FixtureRequest) -> Iterator[InteropBroker]:
    """One running broker of each kind, shared by the session's tests (they use their own topics)."""
    kind = str(request.param)
    require(kind)
    broker = make_broker(kind, session_folder())
    broker.start()
    yield broker
    broker.stop()
    broker.close()


ProbeFactory = Callable[..., MqttProbe]


@pytest.fixture
def probe() -> Iterator[ProbeFactory]:
    """``probe(endpoint, *filters, qos=2, client_id=None, clean_session=True)``: a paho client subscribed to
    ``filters`` (at ``qos``: what the broker grants is up to it); all closed after the test."""
    made: List[MqttProbe] = []

    def make(endpoint: BrokerEndpoint, *filters: str, qos: int = 2, client_id: Optional[str] = None,
             clean_session: bool = True) -> MqttProbe:
        client = MqttProbe(endpoint, client_id=client_id, clean_session=clean_session)
        made.append(client)
        for topic_filter in filters:
            client.subscribe(topic_filter, qos)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
async def start_listener(unique_topic: str) -> AsyncIterator[StartListener]:
    """``await start_listener(endpoint, processor, **config)``: ``EventListener.run(processor)`` in a task, returned
    once subscribed; its topics live under the test's ``unique_topic``. Every listener is stopped afterwards."""
    running: List[Tuple[EventListener, "asyncio.Task[None]"]] = []

    async def start(endpoint: BrokerEndpoint, processor: Any, **overrides: Any) -> Tuple[EventListener, "asyncio.Task[None]"]:
        listener = EventListener(listener_config(endpoint, unique_topic, **overrides))
        task = await run_until_ready(listener, processor, timeout=READY_TIMEOUT + 10)
        running.append((listener, task))
        return listener, task

    yield start
    await stop_listeners(running, READY_TIMEOUT + 20)
